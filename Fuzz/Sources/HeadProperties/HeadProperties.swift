import FuzzSupport
import HTTP2

// Properties of the HTTP/1.1 head parser (Sources/HTTP2/HTTPHead.swift) that hold for requests
// and responses alike, checked on any bytes, with the default limits and with small ones:
// - fed a byte at a time, passing on what `.incomplete(scanned:)` says, the parser decides at the
//   same byte and the same way as parsing each prefix afresh; and no more bytes change a decision;
// - a complete head ends in LF at `length`, within the limits;
// - its field lines are what a plain RFC 9112 splitter makes of the bytes (names lower-cased,
//   values without the OWS, SP and HTAB, around them) and keep the field grammar;
// - written out again, it parses to the same head.

/// What the fuzz targets need of RequestHead and ResponseHead.
public protocol ParsedHead: Sendable {
    static func parse(_ bytes: UnsafeRawBufferPointer, limits: HeadLimits, scannedBefore: Int) -> HeadParse<Self>
    var fields: HeadFields { get }
    var length: Int { get }
    var contentLength: Int { get }
    func header(_ name: String) -> String?
    /// The start line as parsed (method, target, version; or the status).
    var startLine: [String] { get }
    /// The start line the head must have been parsed from (`line`: its bytes, without CRLF).
    func checkStartLine(_ line: ArraySlice<UInt8>, context: String)
    /// The start line to write the head out again with.
    var writtenStartLine: String { get }
}

/// A parse result, comparable.
public enum Outcome: Equatable, CustomStringConvertible {
    case incomplete
    case invalid(status: Int, reason: String)
    case complete(startLine: [String], fields: [String], length: Int)

    public init<Head: ParsedHead>(_ result: HeadParse<Head>) {
        switch result {
        case .incomplete: self = .incomplete
        case .invalid(let status, let reason): self = .invalid(status: status, reason: reason)
        case .complete(let head):
            self = .complete(startLine: head.startLine, fields: head.fields.fields.map { "\($0.name): \($0.value)" },
                             length: head.length)
        }
    }

    public var isDecided: Bool { self != .incomplete }

    public var description: String {
        switch self {
        case .incomplete: return "incomplete"
        case .invalid(let status, let reason): return "invalid \(status) \(reason.debugDescription)"
        case .complete(let startLine, let fields, let length): return "complete \(startLine) \(fields) length \(length)"
        }
    }
}

func parse<Head: ParsedHead>(_: Head.Type, _ bytes: UnsafeRawBufferPointer, _ limits: HeadLimits,
                             scannedBefore: Int = 0) -> HeadParse<Head> {
    Head.parse(bytes, limits: limits, scannedBefore: scannedBefore)
}

func outcome<Head: ParsedHead>(_ type: Head.Type, _ bytes: [UInt8], _ limits: HeadLimits) -> Outcome {
    bytes.withUnsafeBytes { Outcome(parse(type, $0, limits)) }
}

/// A head's lines as a plain splitter sees them: leading empty lines skipped, CRLF ends a line.
func referenceLines(_ head: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
    var rest = head
    while rest.starts(with: [13, 10]) { rest = rest.dropFirst(2) }
    var lines: [ArraySlice<UInt8>] = []
    var start = rest.startIndex
    var index = rest.startIndex
    while index < rest.endIndex {
        if rest[index] == 13 && index + 1 < rest.endIndex && rest[index + 1] == 10 {
            lines.append(rest[start..<index])
            index += 2
            start = index
        } else {
            index += 1
        }
    }
    lines.append(rest[start..<rest.endIndex])
    return lines
}

/// "name: value" as RFC 9112 section 5 splits a field line.
func referenceField(_ line: ArraySlice<UInt8>) -> String? {
    guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return nil }
    let isOWS: (UInt8) -> Bool = { $0 == 32 || $0 == 9 }
    var value = line[(colon + 1)...]
    while let first = value.first, isOWS(first) { value = value.dropFirst() }
    while let last = value.last, isOWS(last) { value = value.dropLast() }
    let name = line[..<colon].map { (65...90).contains($0) ? $0 + 32 : $0 }
    return String(decoding: name, as: UTF8.self) + ": " + String(decoding: value, as: UTF8.self)
}

public func checkHead<Head: ParsedHead>(_ type: Head.Type, _ bytes: UnsafeRawBufferPointer) {
    // Small limits too, so that the size and field-count refusals are reached.
    for limits in [HeadLimits(), HeadLimits(maxBytes: max(8, bytes.count / 2), maxFields: 2)] {
        checkHead(type, bytes, limits)
    }
}

func checkHead<Head: ParsedHead>(_ type: Head.Type, _ bytes: UnsafeRawBufferPointer, _ limits: HeadLimits) {
    let context = "\(Array(bytes).debugText) (limits \(limits.maxBytes) bytes, \(limits.maxFields) fields)"
    let whole = Outcome(parse(type, bytes, limits))

    // A byte at a time, as a slow peer sends it.
    var scanned = 0
    var decidedAt: Int?
    for end in 0...bytes.count {
        let prefix = UnsafeRawBufferPointer(rebasing: bytes[..<end])
        let result = parse(type, prefix, limits, scannedBefore: scanned)
        if case .incomplete(let next) = result {
            require(next >= 0 && next <= end, "\(context): after \(end) bytes scanned \(next)")
            scanned = next
            continue
        }
        let fresh = Outcome(parse(type, prefix, limits))
        require(Outcome(result) == fresh, "\(context): after \(end) bytes one at a time: \(Outcome(result)); at once: \(fresh)")
        require(fresh == whole, "\(context): decided after \(end) bytes: \(fresh); with all \(bytes.count): \(whole)")
        decidedAt = end
        break
    }
    if decidedAt == nil { require(whole == .incomplete, "\(context): never decided a byte at a time, at once \(whole)") }

    switch parse(type, bytes, limits) {
    case .incomplete:
        return
    case .invalid(let status, let reason):
        require(status == 400 || status == 431, "\(context): refused with \(status)")
        require(!reason.isEmpty, "\(context): refused without a reason")
        require(outcome(type, Array(bytes) + more, limits) == whole, "\(context): \(whole), but not with more bytes")
    case .complete(let head):
        require(outcome(type, Array(bytes) + more, limits) == whole, "\(context): \(whole), but not with more bytes")
        let length = head.length
        require(decidedAt == length, "\(context): length \(length), decided after \(decidedAt ?? -1) bytes")
        require(length <= limits.maxBytes && bytes[length - 1] == 10, "\(context): length \(length)")
        require(head.fields.fields.count <= limits.maxFields, "\(context): \(head.fields.fields.count) fields")

        // The lines, as a plain splitter makes them.
        let lines = referenceLines(Array(bytes[..<(length - 4)])[...])
        head.checkStartLine(lines[0], context: context)
        let expected = lines.dropFirst().map(referenceField)
        let fields = head.fields.fields.map { "\($0.name): \($0.value)" }
        require(expected.count == fields.count && zip(expected, fields).allSatisfy { $0 != nil && Array($0!.utf8) == Array($1.utf8) },
                "\(context): fields \(fields), the field lines say \(expected)")
        for field in head.fields.fields {
            require(HTTPGrammar.isToken(field.name), "\(context): field name \(field.name.debugDescription)")
            require(HTTPGrammar.isFieldValue(field.value), "\(context): field value \(field.value.debugDescription)")
        }
        let lengths = head.fields.all("content-length")
        let valid = lengths.isEmpty ? 0 : HTTPGrammar.contentLength(lengths)
        require(valid == head.contentLength, "\(context): Content-Length \(lengths) accepted as \(head.contentLength)")
        for field in head.fields.fields {
            require(head.header(field.name.uppercased()) == head.fields.fields.first { $0.name == field.name }?.value,
                    "\(context): header(\(field.name.uppercased().debugDescription)) is not the first \(field.name)")
        }

        // Written out again (single spaces, CRLF, "name: value"), it parses to the same head.
        var text = head.writtenStartLine + "\r\n"
        for field in head.fields.fields { text += "\(field.name): \(field.value)\r\n" }
        text += "\r\n"
        let again = outcome(type, Array(text.utf8), HeadLimits(maxBytes: text.utf8.count, maxFields: limits.maxFields))
        guard case .complete(let startLine, let fields2, _) = again, startLine == head.startLine, fields2 == fields else {
            require(false, "\(context) parsed to \(whole); written out as \(text.debugDescription) it parses to \(again)")
            return
        }
    }
}

/// More bytes after a head: the HTTP/2 preface, another head.
let more = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nHTTP/1.1 200 OK\r\n\r\n".utf8)
