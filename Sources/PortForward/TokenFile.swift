/// The bearer tokens a relay accepts (`relay --token-auth-file`), in kube-apiserver's
/// `--token-auth-file` format: CSV records `token,user,uid[,"group1,group2"]`, one per line.
/// ```
/// # token,user,uid,groups
/// 31ada4fd-adec-460c-809a-9e56ceb75269,alice,1001,"dev,ops"
/// 6f1c0b6e4a2d,bob,1002
/// ```
/// Read with CSV's rules (RFC 4180, as Go's `encoding/csv` reads it for kube-apiserver): a field
/// may be quoted, a quote inside quotes is doubled, spaces before a field are dropped. Blank
/// lines and lines starting with `#` are skipped. Every problem is one line naming the file and
/// the line, and never the token.
public struct TokenFile: Sendable {
    /// A file larger than this is refused unread (some 40,000 entries of 100 bytes).
    public static let maximumFileSize = 4 << 20
    /// Entries at most: more than any static token file holds.
    public static let maximumEntries = 10_000

    /// Token -> whose it is. Never logged: the relay only looks tokens up.
    public private(set) var identities: [String: Identity] = [:]

    public var count: Int { identities.count }

    public init(contentsOf path: String) throws {
        try self.init(csv: ConfigFile.read(path, kind: "token file", maximumSize: Self.maximumFileSize), source: path)
    }

    public init(csv text: String, source: String = "token file") throws {
        var lines: [String: Int] = [:]
        for record in try CSVRecords.parse(text, source: source) {
            func problem(_ what: String) -> ConfigFileError {
                ConfigFileError(description: "\(source):\(record.line): \(what)")
            }
            let fields = record.fields
            guard fields.count >= 3 else {
                throw problem("expected token,user,uid[,groups], found \(fields.count) field\(fields.count == 1 ? "" : "s")")
            }
            guard fields.count <= 4 else { throw problem("expected token,user,uid[,groups], found \(fields.count) fields (quote the groups: \"a,b\")") }
            let token = fields[0]
            guard !token.isEmpty else { throw problem("the token is empty") }
            // What can be sent as `Authorization: Bearer TOKEN`: visible ASCII, no space.
            guard token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                throw problem("the token holds a space, a control character or a non-ASCII byte (it could not be sent in a header)")
            }
            let user = fields[1]
            guard !user.isEmpty else { throw problem("the user name is empty") }
            if let first = lines[token] { throw problem("the same token as line \(first)") }
            guard lines.count < Self.maximumEntries else { throw problem("more than \(Self.maximumEntries) tokens") }
            lines[token] = record.line
            // Split and trimmed as bytes: a comma followed by a combining mark is one Character,
            // and would not split as a Character (a fuzz finding).
            let groups = fields.count == 4
                ? fields[3].utf8.split(separator: UInt8(ascii: ",")).map(CSVRecords.trimmed).filter { !$0.isEmpty }
                : []
            identities[token] = Identity(user: user, groups: groups)
        }
    }

    /// Whose token this is; nil for a token the file does not hold.
    public func identity(token: String) -> Identity? { identities[token] }
}

/// CSV records with the line each starts on, as RFC 4180 writes them (a quoted field may hold
/// commas, doubled quotes and line ends) and as Go's `encoding/csv` reads them with
/// `TrimLeadingSpace` (what kube-apiserver uses): spaces and tabs before a field are dropped,
/// a quote inside an unquoted field or after a closing quote is an error. Blank lines and
/// `#` comment lines are skipped.
enum CSVRecords {
    struct Record {
        var line: Int
        var fields: [String]
    }

    /// The bytes without the spaces, tabs and line ends around them.
    static func trimmed(_ bytes: Substring.UTF8View) -> String {
        let blank: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        guard let first = bytes.firstIndex(where: { !blank($0) }), let last = bytes.lastIndex(where: { !blank($0) }) else { return "" }
        return String(decoding: bytes[first...last], as: UTF8.self)
    }

    static func parse(_ text: String, source: String) throws -> [Record] {
        var records: [Record] = []
        let bytes = Array(text.utf8)
        var index = 0
        var line = 1
        func problem(_ at: Int, _ what: String) -> ConfigFileError {
            ConfigFileError(description: "\(source):\(at): \(what)")
        }
        func isLineEnd(_ position: Int) -> Bool {
            position >= bytes.count || bytes[position] == UInt8(ascii: "\n")
                || (bytes[position] == UInt8(ascii: "\r") && (position + 1 >= bytes.count || bytes[position + 1] == UInt8(ascii: "\n")))
        }
        /// Past the line end at `position` (CRLF or LF), counting the line.
        func skipLineEnd(_ position: inout Int) {
            if position < bytes.count && bytes[position] == UInt8(ascii: "\r") { position += 1 }
            if position < bytes.count && bytes[position] == UInt8(ascii: "\n") { position += 1; line += 1 }
        }
        while index < bytes.count {
            // A blank line (spaces only, as Go skips empty lines) or a comment.
            var probe = index
            while probe < bytes.count && (bytes[probe] == UInt8(ascii: " ") || bytes[probe] == UInt8(ascii: "\t")) { probe += 1 }
            if isLineEnd(probe) || bytes[probe] == UInt8(ascii: "#") {
                while !isLineEnd(probe) { probe += 1 }
                index = probe
                skipLineEnd(&index)
                continue
            }
            let start = line
            var fields: [String] = []
            while true {
                while index < bytes.count && (bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: "\t")) { index += 1 }
                var field: [UInt8] = []
                if index < bytes.count && bytes[index] == UInt8(ascii: "\"") {
                    let opened = line
                    index += 1
                    while true {
                        guard index < bytes.count else { throw problem(opened, "a quoted field is never closed") }
                        let byte = bytes[index]
                        if byte == UInt8(ascii: "\"") {
                            if index + 1 < bytes.count && bytes[index + 1] == UInt8(ascii: "\"") {
                                field.append(byte)
                                index += 2
                                continue
                            }
                            index += 1
                            break
                        }
                        if byte == UInt8(ascii: "\n") { line += 1 }
                        field.append(byte)
                        index += 1
                    }
                    guard isLineEnd(index) || bytes[index] == UInt8(ascii: ",") else {
                        throw problem(line, "text after a closing quote (a quote inside a quoted field is written \"\")")
                    }
                } else {
                    while !isLineEnd(index) && bytes[index] != UInt8(ascii: ",") {
                        if bytes[index] == UInt8(ascii: "\"") {
                            throw problem(line, "a quote inside an unquoted field (quote the whole field)")
                        }
                        field.append(bytes[index])
                        index += 1
                    }
                }
                fields.append(String(decoding: field, as: UTF8.self))
                if index < bytes.count && bytes[index] == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                skipLineEnd(&index)
                break
            }
            records.append(Record(line: start, fields: fields))
        }
        return records
    }
}
