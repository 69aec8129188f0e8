/// `http://host:port/prefix` or `https://host:port/prefix` split up.
public struct ServerURL: Sendable {
    public var host: String
    public var port: Int
    /// `https://`: TLS, then HTTP/2 (ALPN portforward-h2), or HTTP/1.1 for a SPDY or WebSocket upgrade.
    public var secure = false
    /// The URL's path, put in front of every request's path (`/k8s/clusters/c-abc` from Rancher's
    /// `https://rancher.example/k8s/clusters/c-abc`), as client-go joins its server's path with
    /// the API path: cleaned (no empty, `.` or `..` segments), no trailing slash; "" for none.
    /// A query or fragment is ignored, as client-go ignores them.
    public var path = ""

    public init(parsing text: String) throws {
        var rest = Substring(text)
        var scheme = true
        if rest.hasPrefix("https://") {
            secure = true
            rest = rest.dropFirst(8)
        } else if rest.hasPrefix("http://") {
            rest = rest.dropFirst(7)
        } else {
            scheme = false
        }
        let defaultPort = secure ? 443 : 80
        if let end = rest.firstIndex(where: { $0 == "?" || $0 == "#" }) { rest = rest[..<end] }
        if let slash = rest.firstIndex(of: "/") {
            path = Self.cleaned(rest[slash...])
            // As client-go: a bare HOST:PORT with a path is no URL (a prefix needs its scheme).
            if !scheme && !path.isEmpty {
                throw ForwardError("invalid server URL \"\(text)\": a path needs http:// or https:// in front")
            }
            rest = rest[..<slash]
        }
        guard !rest.isEmpty else { throw ForwardError("invalid server URL \"\(text)\"") }
        if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            port = after.hasPrefix(":") ? Int(after.dropFirst()) ?? -1 : defaultPort
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            port = Int(rest[rest.index(after: colon)...]) ?? -1
        } else {
            host = String(rest)
            port = defaultPort
        }
        guard (1...65535).contains(port) else { throw ForwardError("invalid server URL \"\(text)\": bad port") }
    }

    /// The path as Go's `path.Join` leaves it: empty and `.` segments dropped, `..` takes the one
    /// before it; bytes a request line cannot carry (space, controls, non-ASCII) percent-encoded.
    static func cleaned(_ raw: Substring) -> String {
        var segments: [Substring] = []
        for segment in raw.split(separator: "/", omittingEmptySubsequences: true) {
            if segment == "." { continue }
            if segment == ".." {
                _ = segments.popLast()
                continue
            }
            segments.append(segment)
        }
        let hex = Array("0123456789ABCDEF")
        var text = ""
        for segment in segments {
            text += "/"
            for byte in segment.utf8 {
                if byte <= 0x20 || byte >= 0x7f || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "<") || byte == UInt8(ascii: ">") {
                    text += "%\(hex[Int(byte >> 4)])\(hex[Int(byte & 15)])"
                } else {
                    text.unicodeScalars.append(Unicode.Scalar(byte))
                }
            }
        }
        return text
    }

    /// `path` in front of a request's path (`/api/v1/...`, `/portForward/...`).
    public func target(_ requestPath: String) -> String { path + requestPath }

    public var authority: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
