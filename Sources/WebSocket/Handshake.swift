import CCrypto

/// The server's side of the opening handshake (RFC 6455 section 4.2): is this request a WebSocket
/// upgrade we can accept, which subprotocol, and the 101 that says so. The HTTP/1.1 head is parsed
/// elsewhere (HTTP2's `RequestHead`); this takes its fields as name/value pairs.
public enum WebSocketHandshake {
    /// RFC 6455 section 1.3: appended to the client's key before hashing.
    public static let keyGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    public static let version = "13"

    /// The subprotocols the relay speaks, in the order it prefers them when a client offers several
    /// (see `chooseSubprotocol`).
    public static let portForwardSubprotocols = [
        TunnelSubprotocol.spdy, ChannelEncoding.binary.subprotocol, ChannelEncoding.base64.subprotocol,
    ]

    /// What an accepted request asked for.
    public struct Accepted: Sendable, Equatable {
        public var key: String
        /// nil when the client offered none; the caller decides whether a bare WebSocket will do.
        public var subprotocol: String?
        public var accept: String { WebSocketHandshake.acceptKey(for: key) }

        public init(key: String, subprotocol: String?) {
            self.key = key
            self.subprotocol = subprotocol
        }
    }

    /// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
    public static func acceptKey(for key: String) -> String {
        let input = Array((key + keyGUID).utf8)
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let status = input.withUnsafeBytes { bytes in
            EVP_Digest(bytes.baseAddress, bytes.count, &digest, &length, EVP_sha1(), nil)
        }
        // Only a libcrypto built without SHA-1 fails here, and then no handshake can ever succeed.
        precondition(status == 1 && length == 20, "libcrypto could not compute SHA-1")
        return Base64.encode(Array(digest[..<20]))
    }

    /// Checks a request against RFC 6455 section 4.2.1 and picks a subprotocol from `supported`.
    /// Names are matched without regard to case, as HTTP requires; values of `Upgrade` and
    /// `Connection` too (they are tokens); the key and the subprotocols exactly.
    public static func validate(method: String, fields: [(name: String, value: String)],
                                supported: [String] = portForwardSubprotocols) -> Result<Accepted, HandshakeError> {
        func values(_ name: String) -> [String] {
            fields.filter { $0.name.lowercased() == name.lowercased() }.map { trim($0.value) }
        }
        func tokens(_ name: String) -> [String] {
            values(name).flatMap { $0.split(separator: ",") }.map { trim(String($0)) }.filter { !$0.isEmpty }
        }
        guard method == "GET" else { return .failure(.notGet(method)) }
        guard tokens("Upgrade").contains(where: { $0.lowercased() == "websocket" }) else {
            return .failure(.notWebSocket)
        }
        guard tokens("Connection").contains(where: { $0.lowercased() == "upgrade" }) else {
            return .failure(.connectionLacksUpgrade)
        }
        let versions = tokens("Sec-WebSocket-Version")
        guard versions == [version] else { return .failure(.unsupportedVersion(versions.joined(separator: ", "))) }
        let keys = values("Sec-WebSocket-Key")
        guard keys.count == 1, let key = keys.first, Base64.decode(key)?.count == 16 else {
            return .failure(.badKey(keys.joined(separator: ", ")))
        }
        let offered = tokens("Sec-WebSocket-Protocol")
        if offered.isEmpty { return .success(Accepted(key: key, subprotocol: nil)) }
        guard let chosen = chooseSubprotocol(offered: offered, supported: supported) else {
            return .failure(.noCommonSubprotocol(offered))
        }
        return .success(Accepted(key: key, subprotocol: chosen))
    }

    /// The first subprotocol the client offered that we speak: the client lists them in its order of
    /// preference (kubelet's wsstream picks the same way).
    public static func chooseSubprotocol(offered: [String], supported: [String]) -> String? {
        offered.first { supported.contains($0) }
    }

    /// The 101 answer; the connection speaks WebSocket frames right after it.
    public static func switchingProtocols(_ accepted: Accepted) -> String {
        var text = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Accept: \(accepted.accept)\r\n"
        if let subprotocol = accepted.subprotocol { text += "Sec-WebSocket-Protocol: \(subprotocol)\r\n" }
        return text + "\r\n"
    }

    private static func trim(_ text: String) -> String {
        var slice = Substring(text)
        while let first = slice.first, first == " " || first == "\t" { slice.removeFirst() }
        while let last = slice.last, last == " " || last == "\t" { slice.removeLast() }
        return String(slice)
    }
}

/// Why an upgrade request is refused, and how to say so.
public enum HandshakeError: Error, Sendable, Equatable, CustomStringConvertible {
    case notGet(String)
    case notWebSocket
    case connectionLacksUpgrade
    /// The versions the client named (empty when none): answered 426 with the one we speak.
    case unsupportedVersion(String)
    case badKey(String)
    /// The client offered only subprotocols we do not speak. kubectl answers any refusal by retrying
    /// with plain SPDY, which is what we want it to do.
    case noCommonSubprotocol([String])

    public var status: Int {
        if case .unsupportedVersion = self { return 426 }
        return 400
    }

    /// Header fields the answer must carry besides the usual ones.
    public var fields: [(name: String, value: String)] {
        if case .unsupportedVersion = self { return [("Sec-WebSocket-Version", WebSocketHandshake.version)] }
        return []
    }

    public var description: String {
        switch self {
        case .notGet(let method): return "a WebSocket upgrade must be a GET, not \(method)"
        case .notWebSocket: return "Upgrade does not name websocket"
        case .connectionLacksUpgrade: return "Connection does not name Upgrade"
        case .unsupportedVersion(let versions):
            return versions.isEmpty ? "Sec-WebSocket-Version is missing: this server speaks 13"
                : "Sec-WebSocket-Version \(versions) is not spoken here: this server speaks 13"
        case .badKey(let key):
            return key.isEmpty ? "Sec-WebSocket-Key is missing" : "Sec-WebSocket-Key must be 16 bytes in base64, once"
        case .noCommonSubprotocol(let offered):
            return "none of the subprotocols offered (\(offered.joined(separator: ", "))) is spoken here"
        }
    }

    /// A complete HTTP/1.1 answer with the reason as its one-line body; the connection closes after it.
    public var response: String {
        let reason = status == 426 ? "Upgrade Required" : "Bad Request"
        let body = description + "\n"
        var text = "HTTP/1.1 \(status) \(reason)\r\nContent-Type: text/plain; charset=utf-8\r\n"
        for field in fields { text += "\(field.name): \(field.value)\r\n" }
        return text + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
    }
}
