import CNGHTTP2

/// The HTTP/1.1 side of an h2c upgrade (RFC 7540 section 3.2): the messages each side writes.
/// Heads are parsed in HTTPHead.swift.
public enum HTTPText {
    /// Offset of "\r\n\r\n", if the head is complete; the search starts at `from`.
    public static func endOfHead(_ bytes: UnsafeRawBufferPointer, from: Int = 0) -> Int? {
        guard bytes.count >= 4, from <= bytes.count - 4 else { return nil }
        for index in max(from, 0)...(bytes.count - 4)
        where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
            return index
        }
        return nil
    }

    public static let switchingProtocols = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    /// kubectl's SPDY upgrade for port-forward (the kubelet's answer, header for header).
    public static let spdySwitchingProtocols = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n"

    /// A complete HTTP/1.1 answer with a one-line text body; the connection closes after it.
    public static func response(status: Int, reason: String, contentType: String = "text/plain; charset=utf-8", body: String) -> String {
        let line = body.hasSuffix("\n") ? body : body + "\n"
        return "HTTP/1.1 \(status) \(reason)\r\nContent-Type: \(contentType)\r\n"
            + "Content-Length: \(line.utf8.count)\r\nConnection: close\r\n\r\n\(line)"
    }

    /// The client's upgrade request.
    public static func upgradeRequest(method: String = "POST", path: String, authority: String, settings: [UInt8]) -> String {
        "\(method) \(path) HTTP/1.1\r\nHost: \(authority)\r\nUser-Agent: portforward\r\n"
            + "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: \(Base64URL.encode(settings))\r\n"
            + "Content-Length: 0\r\n\r\n"
    }

    /// The SETTINGS payload a client sends in `HTTP2-Settings`.
    public static func settingsPayload(_ settings: SessionSettings) -> [UInt8] {
        var entries = settings.entries
        var payload = [UInt8](repeating: 0, count: entries.count * 6)
        let count = nghttp2_pack_settings_payload(&payload, payload.count, &entries, entries.count)
        return count > 0 ? Array(payload[..<count]) : []
    }

    public static let clientPrefacePrefix: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
}

/// base64url without padding (RFC 7540 section 3.2.1).
public enum Base64URL {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            var value = 0
            for byte in chunk { value = value << 8 | Int(byte) }
            value <<= 8 * (3 - chunk.count)
            for position in 0..<(chunk.count + 1) { out.append(alphabet[(value >> (18 - 6 * position)) & 63]) }
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ text: String) -> [UInt8]? {
        var value = 0, bits = 0
        var out: [UInt8] = []
        for character in text.utf8 {
            if character == UInt8(ascii: "=") { break }
            let digit: Int
            switch character {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): digit = Int(character) - 65
            case UInt8(ascii: "a")...UInt8(ascii: "z"): digit = Int(character) - 97 + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = Int(character) - 48 + 52
            case UInt8(ascii: "-"), UInt8(ascii: "+"): digit = 62
            case UInt8(ascii: "_"), UInt8(ascii: "/"): digit = 63
            default: return nil
            }
            value = value << 6 | digit
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8((value >> bits) & 0xFF))
            }
        }
        return out
    }
}
