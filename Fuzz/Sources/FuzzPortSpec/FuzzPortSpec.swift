import FuzzSupport
import PortForward

// `PortSpec(parsing:)` against a model of the grammar (`[LOCAL:]REMOTE`, ASCII digits, at most
// five of them, LOCAL 0-65535, REMOTE 1-65535), `description` parsing back to the same value, and
// `PortSpec.parseAll` over the input's lines.

/// The model: what a spec must parse to, or nil when it must be refused.
func expected(_ text: String) -> PortSpec? {
    func port(_ part: ArraySlice<UInt8>, allowZero: Bool) -> Int? {
        guard (1...5).contains(part.count), part.allSatisfy({ (48...57).contains($0) }) else { return nil }
        let value = part.reduce(0) { $0 * 10 + Int($1 - 48) }
        return value <= 65535 && (value > 0 || allowZero) ? value : nil
    }
    let bytes = Array(text.utf8)
    let parts = bytes.split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
    switch parts.count {
    case 1:
        return port(parts[0], allowZero: false).map { PortSpec(local: $0, remote: $0) }
    case 2:
        let local = parts[0].isEmpty ? 0 : port(parts[0], allowZero: true)
        guard let local, let remote = port(parts[1], allowZero: false) else { return nil }
        return PortSpec(local: local, remote: remote)
    default:
        return nil
    }
}

func parse(_ text: String) -> PortSpec? {
    do {
        return try PortSpec(parsing: text)
    } catch {
        require(!"\(error)".isEmpty, "refused \(text.debugDescription) without a message")
        return nil
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let text = FuzzInput(data, size).bytes.text
    let spec = parse(text)
    require(spec == expected(text), "\(text.debugDescription) parsed to \(String(describing: spec)), the grammar says \(String(describing: expected(text)))")
    if let spec {
        require((0...65535).contains(spec.local) && (1...65535).contains(spec.remote), "\(spec) out of range")
        require(parse(spec.description) == spec, "\(spec) does not parse back from \(spec.description.debugDescription)")
    }

    // parseAll: every line a spec; it fails when one does or when a local port (not 0) repeats.
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    let singles = lines.map(parse)
    let all = try? PortSpec.parseAll(lines)
    var locals = Set<Int>()
    let distinct = singles.allSatisfy { spec in spec.map { $0.local == 0 || locals.insert($0.local).inserted } ?? true }
    if singles.allSatisfy({ $0 != nil }) && distinct {
        require(all == singles.map { $0! }, "parseAll(\(lines)) gave \(String(describing: all)), one by one: \(singles)")
    } else {
        require(all == nil, "parseAll accepted \(lines): \(String(describing: all))")
    }
    require((try? PortSpec.parseAll([])) == nil, "parseAll accepted no specs")
    return 0
}

@main enum Main { static func main() { FuzzerDriver.run(testOneInput) } }
