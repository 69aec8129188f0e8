/// RFC 9110 / 9112 rules an accepted HTTP/1.1 head must keep, checked on what a parser returns.
public enum HTTPGrammar {
    /// tchar: "!#$%&'*+-.^_`|~", digits, letters.
    public static func isToken(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"):
                return true
            default:
                return "!#$%&'*+-.^_`|~".utf8.contains(byte)
            }
        }
    }

    /// A field value as a parser hands it on: no CR, LF or NUL (RFC 9110 section 5.5), no
    /// leading or trailing SP / HTAB (RFC 9112 section 5: OWS is not part of the value).
    public static func isFieldValue(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        let blank: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 }
        return !bytes.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0x00 }
            && !(bytes.first.map(blank) ?? false) && !(bytes.last.map(blank) ?? false)
    }

    /// A request target: visible ASCII only (no whitespace, controls or raw non-ASCII octets).
    public static func isRequestTarget(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy { (0x21...0x7E).contains($0) }
    }

    /// Content-Length: 1*DIGIT, or a list of one such value repeated (RFC 9110 section 8.6),
    /// small enough to be a length.
    public static func contentLength(_ values: [String]) -> Int? {
        var found: Int?
        for value in values {
            for part in Array(value.utf8).split(separator: 0x2C, omittingEmptySubsequences: false) {
                let digits = Array(part.drop { $0 == 0x20 || $0 == 0x09 }.reversed().drop { $0 == 0x20 || $0 == 0x09 }.reversed())
                guard !digits.isEmpty, digits.count <= 18, digits.allSatisfy({ (0x30...0x39).contains($0) }) else { return nil }
                let number = digits.reduce(0) { $0 * 10 + Int($1 - 0x30) }
                if let found, found != number { return nil }
                found = number
            }
        }
        return found
    }
}
