import CFuzzerDriver
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The signature libFuzzer calls for each input.
public typealias TestOneInput = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt

public enum FuzzerDriver {
    /// Hands the command line to libFuzzer, which runs `testOneInput` until it is done.
    public static func run(_ testOneInput: TestOneInput) -> Never {
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, testOneInput))
    }
}

/// A property every input must keep. On a violation it says which one and aborts, which libFuzzer
/// reports as a crash and saves the input for. (`precondition` would say nothing in a release build.)
public func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                    file: StaticString = #fileID, line: UInt = #line) {
    if condition() { return }
    fputs("property violated at \(file):\(line): \(message())\n", stderr)
    abort()
}

/// The input as bytes, read from the front: settings first, then the payload.
public struct FuzzInput {
    public let bytes: UnsafeRawBufferPointer
    public private(set) var offset = 0

    public init(_ data: UnsafePointer<UInt8>?, _ size: Int) {
        bytes = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
    }

    public var isEmpty: Bool { offset >= bytes.count }

    /// The next byte, 0 once the input is used up.
    public mutating func byte() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    /// At most `count` next bytes.
    public mutating func take(_ count: Int) -> UnsafeRawBufferPointer {
        let end = min(bytes.count, offset + max(0, count))
        defer { offset = end }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<end])
    }

    /// Whatever is left.
    public mutating func rest() -> UnsafeRawBufferPointer { take(bytes.count - offset) }
}

extension UnsafeRawBufferPointer {
    /// The bytes as text; invalid UTF-8 becomes U+FFFD, as the parsers see it.
    public var text: String { String(decoding: self, as: UTF8.self) }
}

extension Array where Element == UInt8 {
    /// The bytes as a Swift string literal, for messages.
    public var debugText: String { String(decoding: self, as: UTF8.self).debugDescription }
}

/// Splits a stream into the pieces a fuzz input asks for: each piece byte is a length (1-256),
/// used in turn and again from the first; no piece bytes means the whole stream at once.
public func pieces(of count: Int, sizes: UnsafeRawBufferPointer) -> [Range<Int>] {
    guard !sizes.isEmpty else { return count == 0 ? [] : [0..<count] }
    var ranges: [Range<Int>] = []
    var offset = 0
    var round = 0
    while offset < count {
        let size = min(Int(sizes[round % sizes.count]) + 1, count - offset)
        ranges.append(offset..<(offset + size))
        offset += size
        round += 1
    }
    return ranges
}

/// `FUZZ_WRITE_SEEDS=DIR <target>` writes the target's seeds (made with the project's own encoders)
/// to DIR and exits, instead of fuzzing: how Fuzz/Corpus/<target>/ was made.
public func writeSeedsIfAsked(_ seeds: () -> [(name: String, bytes: [UInt8])]) {
    guard let directory = getenv("FUZZ_WRITE_SEEDS").map({ String(cString: $0) }) else { return }
    for seed in seeds() {
        let path = directory + "/" + seed.name
        guard let file = fopen(path, "wb") else { fputs("cannot write \(path)\n", stderr); exit(1) }
        _ = seed.bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
        fclose(file)
    }
    exit(0)
}
