import CLinuxShim
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The bytes every bench sender sends: a fixed pseudo-random sequence, so that an echo can be
/// checked byte for byte without keeping a copy of what was sent. A stream's messages start at
/// offsets of their own, so bytes delivered to the wrong stream do not pass either.
enum Pattern {
    static let size = 1 << 20
    /// The longest message a stream may send in one piece (`--size`).
    static let maxMessage = 256 * 1024
    private static let offsets = 1 << 16

    nonisolated(unsafe) static let bytes: UnsafeMutableRawPointer = {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for index in stride(from: 0, to: size, by: 8) {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            memory.storeBytes(of: state, toByteOffset: index, as: UInt64.self)
        }
        return memory
    }()

    /// Where message `sequence` of stream `slot` starts.
    @inline(__always)
    static func offset(slot: Int, sequence: Int) -> Int {
        (slot &* 7919 &+ sequence &* 131) & (offsets - 1)
    }

    /// True when `bytes` are the pattern from `offset` on.
    @inline(__always)
    static func matches(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Bool {
        guard let base = bytes.baseAddress, offset + bytes.count <= size else { return false }
        return memcmp(base, Pattern.bytes + offset, bytes.count) == 0
    }
}

/// A timer (or any completion) that runs a closure.
final class Tick: CompletionHandler {
    var action: () -> Void
    init(_ action: @escaping () -> Void) { self.action = action }
    func complete(_ completion: Completion) { action() }
}

extension ReactorBackend {
    /// Runs `action` after `seconds`.
    @discardableResult
    func after(_ seconds: Double, _ action: @escaping () -> Void) -> TimerID {
        timer(nanoseconds: UInt64(max(seconds, 0) * 1e9), handler: Tick(action), tag: 0)
    }
}

/// A failure of the bench itself (set-up, a relay that cannot be reached, ...): one line.
public struct BenchError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Seconds since an arbitrary start, from the monotonic clock.
@inline(__always)
func now() -> Double { Double(Clock.nanoseconds()) / 1e9 }

// MARK: - Formatting without Foundation

extension Double {
    /// Fixed-point with `digits` decimals.
    func fixed(_ digits: Int) -> String {
        guard isFinite else { return isNaN ? "nan" : (self < 0 ? "-inf" : "inf") }
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let scaled = (abs(self) * scale).rounded()
        let whole = Int(scaled / scale)
        var text = (self < 0 && scaled != 0 ? "-" : "") + String(whole)
        if digits > 0 {
            let fraction = Int(scaled - Double(whole) * scale)
            var digitsText = String(fraction)
            while digitsText.count < digits { digitsText = "0" + digitsText }
            text += "." + digitsText
        }
        return text
    }

    /// Three significant digits or so: 31.2, 4.07, 0.512, 11800.
    var significant: String {
        let magnitude = abs(self)
        if magnitude >= 1000 { return Int(rounded()).grouped }
        if magnitude >= 100 { return fixed(0) }
        if magnitude >= 10 { return fixed(1) }
        if magnitude >= 1 { return fixed(2) }
        return fixed(3)
    }
}

extension Int {
    /// 10000 -> "10,000".
    var grouped: String {
        let digits = String(abs(self))
        var out = ""
        for (index, character) in digits.enumerated() {
            if index > 0 && (digits.count - index) % 3 == 0 { out.append(",") }
            out.append(character)
        }
        return self < 0 ? "-" + out : out
    }
}

extension String {
    func padded(_ width: Int, right: Bool = false) -> String {
        let count = self.count
        if count >= width { return self }
        let fill = String(repeating: " ", count: width - count)
        return right ? fill + self : self + fill
    }
}

/// Microseconds, for latencies: "812 us", "1.24 ms", "2.10 s".
func formatLatency(nanoseconds: UInt64) -> String {
    let value = Double(nanoseconds)
    if value < 1e3 { return "\(nanoseconds) ns" }
    if value < 1e6 { return (value / 1e3).significant + " us" }
    if value < 1e9 { return (value / 1e6).significant + " ms" }
    return (value / 1e9).significant + " s"
}

// MARK: - JSON without Foundation

/// Just enough JSON for the results file.
public indirect enum JSON {
    case object([(String, JSON)])
    case array([JSON])
    case string(String)
    case number(Double)
    case integer(Int)
    case bool(Bool)
    case null

    public func serialized(indent: Int = 0) -> String {
        let pad = String(repeating: "  ", count: indent)
        let inner = String(repeating: "  ", count: indent + 1)
        switch self {
        case .object(let members):
            if members.isEmpty { return "{}" }
            let body = members.map { "\(inner)\(JSON.quote($0.0)): \($0.1.serialized(indent: indent + 1))" }
            return "{\n" + body.joined(separator: ",\n") + "\n\(pad)}"
        case .array(let items):
            if items.isEmpty { return "[]" }
            let body = items.map { inner + $0.serialized(indent: indent + 1) }
            return "[\n" + body.joined(separator: ",\n") + "\n\(pad)]"
        case .string(let text):
            return JSON.quote(text)
        case .number(let value):
            if !value.isFinite { return "null" }
            if value == value.rounded() && abs(value) < 1e15 { return String(Int(value)) }
            var text = value.fixed(abs(value) >= 100 ? 2 : (abs(value) >= 1 ? 4 : 6))
            while text.hasSuffix("0") { text.removeLast() }
            if text.hasSuffix(".") { text.removeLast() }
            return text
        case .integer(let value):
            return String(value)
        case .bool(let value):
            return value ? "true" : "false"
        case .null:
            return "null"
        }
    }

    static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

/// Writes `text` to `path` (replacing it).
func writeFile(_ path: String, _ text: String) throws {
    guard let file = fopen(path, "w") else { throw SystemError("cannot write", subject: path) }
    defer { fclose(file) }
    let bytes = Array(text.utf8)
    if fwrite(bytes, 1, bytes.count, file) != bytes.count { throw SystemError("cannot write", subject: path) }
}

/// Reads a small file (procfs, a pods file) whole; nil when it cannot be opened.
func readFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16384)
    while true {
        let count = read(fd, &chunk, chunk.count)
        if count <= 0 { break }
        bytes.append(contentsOf: chunk[..<count])
    }
    return String(decoding: bytes, as: UTF8.self)
}

func standardError(_ line: String) {
    fputs(line + "\n", stderr)
}
