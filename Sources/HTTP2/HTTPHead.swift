/// HTTP/1.1 message heads (RFC 9112), as the relay reads a client's upgrade request and the client
/// reads the relay's answer. One parser for both, strict where the RFC says a recipient must
/// reject: a head is either complete and well formed, still incomplete (within the size limit),
/// or refused with the status to answer (400, or 431 when it is too large).
public struct HeadLimits: Sendable {
    /// The largest head accepted, request or status line and field lines and the blank line.
    public var maxBytes: Int
    /// The most field lines accepted.
    public var maxFields: Int

    public init(maxBytes: Int = 16 * 1024, maxFields: Int = 100) {
        self.maxBytes = maxBytes
        self.maxFields = maxFields
    }
}

/// What parsing the bytes so far gives.
public enum HeadParse<Head: Sendable>: Sendable {
    /// Not all of the head yet; `scanned` bytes need not be looked at again.
    case incomplete(scanned: Int)
    /// The status to answer with (400 or 431) and why, in one line.
    case invalid(status: Int, reason: String)
    case complete(Head)
}

/// The field lines of a head: lower-case names, values without surrounding white space.
public struct HeadFields: Sendable {
    public var fields: [(name: String, value: String)] = []

    /// `fields` as given: names must already be lower case.
    public init(_ fields: [(name: String, value: String)] = []) {
        self.fields = fields
    }

    public func first(_ name: String) -> String? {
        let wanted = name.lowercased()
        return fields.first { $0.name == wanted }?.value
    }

    public func all(_ name: String) -> [String] {
        let wanted = name.lowercased()
        return fields.filter { $0.name == wanted }.map(\.value)
    }

    /// Whether one of the comma-separated values of `name`, in any of its field lines, is `token`
    /// (ASCII case-insensitive, as tokens compare).
    public func lists(_ name: String, _ token: String) -> Bool {
        let wanted = Array(token.lowercased().utf8)
        return all(name).contains { line in
            line.utf8.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false).contains { part in
                HeadLines.withoutOWS(part).elementsEqual(wanted) { $0 | ($0 >= 65 && $0 <= 90 ? 32 : 0) == $1 }
            }
        }
    }

    /// The body length a `Content-Length` gives: nil when there is none; `.failure` with the reason
    /// when it is not one non-negative decimal number (every value, in every field line, the same).
    public func contentLength() -> Result<Int?, HeadError> {
        var length: Int?
        for line in all("content-length") {
            for part in line.split(separator: ",", omittingEmptySubsequences: false) {
                let text = HeadLines.withoutOWS(part.utf8)
                // 18 digits stay below Int.max; nothing that large is a real body.
                guard !text.isEmpty, text.count <= 18, text.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                      let value = Int(Substring(text)) else {
                    return .failure(HeadError("invalid Content-Length \"\(line.prefix(32))\""))
                }
                if let length, length != value {
                    return .failure(HeadError("conflicting Content-Length values"))
                }
                length = value
            }
        }
        return .success(length)
    }
}

public struct HeadError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

public struct RequestHead: Sendable {
    public var method: String
    public var target: String
    public var version: String
    public var fields: HeadFields
    /// Bytes the head took, the blank line included.
    public var length: Int
    /// The body length (`Content-Length`, checked; 0 when absent).
    public var contentLength: Int

    public func header(_ name: String) -> String? { fields.first(name) }

    /// True when an HTTP/1.1 request asks for h2c as RFC 7540 section 3.2 says a client must:
    /// `Upgrade` lists h2c and `Connection` lists both `Upgrade` and `HTTP2-Settings`. Without
    /// them an intermediary may have forwarded the fields from another hop (the reason RFC 9110
    /// section 7.8 has a sender list Upgrade in Connection, and a server ignore Upgrade in an
    /// HTTP/1.0 request). curl, nghttp, Go's h2c and this project's client all send both.
    public var asksForH2C: Bool {
        guard version == "HTTP/1.1", fields.lists("upgrade", "h2c") else { return false }
        return fields.lists("connection", "upgrade") && fields.lists("connection", "http2-settings")
    }

    public typealias ParseResult = HeadParse<RequestHead>

    /// Parses a request head at the start of `bytes`; `scannedBefore` is what an earlier
    /// `.incomplete` said was already searched, so that a head arriving a byte at a time is not
    /// searched from its start each time.
    public static func parse(_ bytes: UnsafeRawBufferPointer, limits: HeadLimits = HeadLimits(),
                             scannedBefore: Int = 0) -> ParseResult {
        HeadLines.parse(bytes, limits: limits, scannedBefore: scannedBefore, request)
    }

    private static func request(_ lines: HeadLines) -> ParseResult {
        // request-line = method SP request-target SP HTTP-version
        let parts = lines.start.split(separator: 32, omittingEmptySubsequences: false)
        guard parts.count == 3, let method = parts.first, !method.isEmpty, method.allSatisfy(HeadLines.isTokenByte),
              !parts[1].isEmpty, parts[1].allSatisfy({ $0 > 32 && $0 < 127 }) else {
            return .invalid(status: 400, reason: "malformed request line")
        }
        let version = String(decoding: parts[2], as: UTF8.self)
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else {
            return .invalid(status: 400, reason: "unsupported HTTP version \"\(version.prefix(16))\"")
        }
        let fields = lines.fields
        // RFC 9112 section 3.2: a 1.1 request has exactly one Host; more than one is always an error.
        let hosts = fields.all("host")
        if hosts.count > 1 || (hosts.isEmpty && version == "HTTP/1.1") {
            return .invalid(status: 400, reason: hosts.isEmpty ? "missing Host header" : "more than one Host header")
        }
        let length: Int?
        switch fields.contentLength() {
        case .failure(let error): return .invalid(status: 400, reason: error.description)
        case .success(let value): length = value
        }
        if fields.first("transfer-encoding") != nil && length != nil {
            return .invalid(status: 400, reason: "both Transfer-Encoding and Content-Length")
        }
        return .complete(RequestHead(method: String(decoding: method, as: UTF8.self),
                                     target: String(decoding: parts[1], as: UTF8.self), version: version,
                                     fields: fields, length: lines.length, contentLength: length ?? 0))
    }
}

public struct ResponseHead: Sendable {
    public var status: Int
    public var fields: HeadFields
    public var length: Int

    public func header(_ name: String) -> String? { fields.first(name) }

    public typealias ParseResult = HeadParse<ResponseHead>

    public static func parse(_ bytes: UnsafeRawBufferPointer, limits: HeadLimits = HeadLimits(),
                             scannedBefore: Int = 0) -> ParseResult {
        HeadLines.parse(bytes, limits: limits, scannedBefore: scannedBefore, response)
    }

    private static func response(_ lines: HeadLines) -> ParseResult {
        // status-line = HTTP-version SP 3DIGIT SP [reason-phrase]
        let start = lines.start
        guard start.count >= 12, start.starts(with: Array("HTTP/1.".utf8)), start[7] == 48 || start[7] == 49,
              start[8] == 32, start[9...11].allSatisfy({ $0 >= 48 && $0 <= 57 }), start.count == 12 || start[12] == 32 else {
            return .invalid(status: 400, reason: "malformed status line")
        }
        let status = start[9...11].reduce(0) { $0 * 10 + Int($1 - 48) }
        guard status >= 100 else { return .invalid(status: 400, reason: "malformed status line") }
        if case .failure(let error) = lines.fields.contentLength() {
            return .invalid(status: 400, reason: error.description)
        }
        return .complete(ResponseHead(status: status, fields: lines.fields, length: lines.length))
    }

    /// The checked `Content-Length` (0 when absent or invalid: `parse` refuses invalid ones).
    public var contentLength: Int {
        if case .success(let value) = fields.contentLength() { return value ?? 0 }
        return 0
    }
}

/// A head split into its start line and field lines, with RFC 9112's rules for field lines.
struct HeadLines {
    var start: ArraySlice<UInt8>
    var fields: HeadFields
    var length: Int

    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }

    /// Without the OWS (SP, HTAB) around it (RFC 9112 section 5): bytes, not Characters, which
    /// would also take Unicode white space (NBSP, NEL) and a combining mark after a space.
    static func withoutOWS<Bytes: BidirectionalCollection>(_ bytes: Bytes) -> Bytes.SubSequence where Bytes.Element == UInt8 {
        let isOWS: (UInt8) -> Bool = { $0 == 32 || $0 == 9 }
        var rest = bytes[...]
        while let first = rest.first, isOWS(first) { rest = rest.dropFirst() }
        while let last = rest.last, isOWS(last) { rest = rest.dropLast() }
        return rest
    }

    /// Splits the head and, once it is complete and its field lines are well formed, hands it to
    /// `startLine`, which reads the start line (request or status) and the fields it cares about.
    static func parse<Head>(_ bytes: UnsafeRawBufferPointer, limits: HeadLimits, scannedBefore: Int,
                            _ startLine: (HeadLines) -> HeadParse<Head>) -> HeadParse<Head> {
        switch split(bytes, limits: limits, scannedBefore: scannedBefore) {
        case .incomplete(let scanned): return .incomplete(scanned: scanned)
        case .invalid(let status, let reason): return .invalid(status: status, reason: reason)
        case .complete(let lines): return startLine(lines)
        }
    }

    static func split(_ bytes: UnsafeRawBufferPointer, limits: HeadLimits, scannedBefore: Int) -> HeadParse<HeadLines> {
        // RFC 9112 section 2.2: empty lines before the start line are ignored (a few).
        var begin = 0
        while begin + 1 < bytes.count && begin < 8 && bytes[begin] == 13 && bytes[begin + 1] == 10 { begin += 2 }
        guard let end = HTTPText.endOfHead(bytes, from: max(begin, scannedBefore)) else {
            if bytes.count > limits.maxBytes {
                return .invalid(status: 431, reason: "head larger than \(limits.maxBytes) bytes")
            }
            return .incomplete(scanned: max(begin, bytes.count - 3))
        }
        let length = end + 4
        if length > limits.maxBytes {
            return .invalid(status: 431, reason: "head larger than \(limits.maxBytes) bytes")
        }
        let head = Array(bytes[begin..<end])
        var lines: [ArraySlice<UInt8>] = []
        var lineStart = 0
        var index = 0
        while index < head.count {
            let byte = head[index]
            if byte == 13 {
                guard index + 1 < head.count, head[index + 1] == 10 else {
                    return .invalid(status: 400, reason: "bare CR in head")
                }
                lines.append(head[lineStart..<index])
                index += 2
                lineStart = index
                continue
            }
            if byte == 10 || byte == 0 { return .invalid(status: 400, reason: byte == 0 ? "NUL in head" : "bare LF in head") }
            index += 1
        }
        lines.append(head[lineStart..<head.count])
        if lines.count - 1 > limits.maxFields {
            return .invalid(status: 431, reason: "more than \(limits.maxFields) header fields")
        }
        var fields = HeadFields()
        fields.fields.reserveCapacity(lines.count - 1)
        for line in lines.dropFirst() {
            // obs-fold (a line starting with white space) is refused (RFC 9112 section 5.2).
            guard let first = line.first, first != 32, first != 9 else {
                return .invalid(status: 400, reason: line.isEmpty ? "malformed header line" : "obsolete line folding")
            }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else {
                return .invalid(status: 400, reason: "malformed header line")
            }
            let name = line[line.startIndex..<colon]
            // No white space between the name and the colon (section 5.1), and a token name.
            guard !name.isEmpty, name.allSatisfy(isTokenByte) else {
                return .invalid(status: 400, reason: "invalid header name")
            }
            let value = line[(colon + 1)...]
            guard value.allSatisfy({ $0 == 9 || ($0 >= 32 && $0 != 127) }) else {
                return .invalid(status: 400, reason: "invalid character in header value")
            }
            fields.fields.append((String(decoding: name, as: UTF8.self).lowercased(),
                                  String(decoding: withoutOWS(value), as: UTF8.self)))
        }
        return .complete(HeadLines(start: lines[0], fields: fields, length: length))
    }
}
