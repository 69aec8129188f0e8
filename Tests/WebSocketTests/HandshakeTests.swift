import CCrypto
import Testing
import WebSocket

struct UpgradeCase: Sendable, CustomTestStringConvertible {
    var name: String
    var method = "GET"
    var fields: [String]
    /// "101 <subprotocol or ->" or "<status> <reason>".
    var expected: String
    var testDescription: String { name }
}

private let key = "dGhlIHNhbXBsZSBub25jZQ=="
private let base = ["Host: relay", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: \(key)",
                    "Sec-WebSocket-Version: 13"]

@Suite("WebSocket handshake: an upgrade request's fields in, 101 or a refusal out")
struct HandshakeTests {
    @Test("RFC 6455 section 1.3's own example key and accept value")
    func rfcExample() {
        // The RFC's text (and SHA-1 by any tool) gives s3pPLMBiTxaQ9kYGzzhZRbK+xOo= for this key.
        #expect(WebSocketHandshake.acceptKey(for: key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    static let cases: [UpgradeCase] = [
        UpgradeCase(name: "a plain upgrade without a subprotocol", fields: base, expected: "101 -"),
        UpgradeCase(name: "kubectl's SPDY tunnel", fields: base + ["Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io"],
                    expected: "101 SPDY/3.1+portforward.k8s.io"),
        UpgradeCase(name: "the client's order decides among several we speak",
                    fields: base + ["Sec-WebSocket-Protocol: v4.base64.channel.k8s.io, v4.channel.k8s.io"],
                    expected: "101 v4.base64.channel.k8s.io"),
        UpgradeCase(name: "offers over several fields, unknown ones skipped",
                    fields: base + ["Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: v4.channel.k8s.io"],
                    expected: "101 v4.channel.k8s.io"),
        UpgradeCase(name: "names and token values without regard to case, Connection as a list",
                    fields: ["upgrade: WebSocket", "CONNECTION: keep-alive, upgrade", "sec-websocket-key:  \(key) ",
                             "sec-websocket-version: 13"], expected: "101 -"),
        UpgradeCase(name: "only subprotocols we do not speak", fields: base + ["Sec-WebSocket-Protocol: v5.channel.k8s.io"],
                    expected: "400 none of the subprotocols offered (v5.channel.k8s.io) is spoken here"),
        UpgradeCase(name: "a POST", method: "POST", fields: base, expected: "400 a WebSocket upgrade must be a GET, not POST"),
        UpgradeCase(name: "Upgrade names another protocol", fields: ["Upgrade: h2c"] + base.dropFirst(2),
                    expected: "400 Upgrade does not name websocket"),
        UpgradeCase(name: "Connection without Upgrade", fields: base.filter { !$0.hasPrefix("Connection") } + ["Connection: close"],
                    expected: "400 Connection does not name Upgrade"),
        UpgradeCase(name: "an older version", fields: base.dropLast() + ["Sec-WebSocket-Version: 8"],
                    expected: "426 Sec-WebSocket-Version 8 is not spoken here: this server speaks 13"),
        UpgradeCase(name: "no version", fields: Array(base.dropLast()),
                    expected: "426 Sec-WebSocket-Version is missing: this server speaks 13"),
        UpgradeCase(name: "no key", fields: base.filter { !$0.hasPrefix("Sec-WebSocket-Key") },
                    expected: "400 Sec-WebSocket-Key is missing"),
        UpgradeCase(name: "a key of 15 bytes", fields: base.filter { !$0.hasPrefix("Sec-WebSocket-Key") } + ["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA"],
                    expected: "400 Sec-WebSocket-Key must be 16 bytes in base64, once"),
        UpgradeCase(name: "a key that is not base64", fields: base.filter { !$0.hasPrefix("Sec-WebSocket-Key") } + ["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ!="],
                    expected: "400 Sec-WebSocket-Key must be 16 bytes in base64, once"),
        UpgradeCase(name: "two keys", fields: base + ["Sec-WebSocket-Key: \(key)"],
                    expected: "400 Sec-WebSocket-Key must be 16 bytes in base64, once"),
    ]

    @Test(arguments: cases)
    func validate(_ testCase: UpgradeCase) {
        let fields = testCase.fields.map { line -> (name: String, value: String) in
            let parts = line.split(separator: ":", maxSplits: 1)
            return (String(parts[0]), String(parts[1]))
        }
        switch WebSocketHandshake.validate(method: testCase.method, fields: fields) {
        case .success(let accepted):
            #expect("101 \(accepted.subprotocol ?? "-")" == testCase.expected)
            #expect(accepted.key == key)
        case .failure(let error):
            #expect("\(error.status) \(error)" == testCase.expected)
        }
    }

    @Test("the 101 answer carries the accept value and the chosen subprotocol")
    func switchingProtocols() {
        let accepted = WebSocketHandshake.Accepted(key: key, subprotocol: "v4.channel.k8s.io")
        #expect(WebSocketHandshake.switchingProtocols(accepted) ==
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n")
        let bare = WebSocketHandshake.switchingProtocols(.init(key: key, subprotocol: nil))
        #expect(!bare.contains("Sec-WebSocket-Protocol"))
    }

    @Test("a refusal for the version says which version we speak")
    func versionRefusal() {
        let error = HandshakeError.unsupportedVersion("8")
        #expect(error.status == 426)
        #expect(error.response.hasPrefix("HTTP/1.1 426 Upgrade Required\r\n"))
        #expect(error.response.contains("\r\nSec-WebSocket-Version: 13\r\n"))
        #expect(HandshakeError.notWebSocket.response.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(!HandshakeError.notWebSocket.response.contains("Sec-WebSocket-Version"))
    }
}

@Suite("Base64: strict, incremental, and the same as libcrypto's")
struct Base64Tests {
    @Test("every length from 0 to 64 encodes as libcrypto does and decodes back")
    func roundTrip() {
        for count in 0...64 {
            let data = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            var expected = [UInt8](repeating: 0, count: Base64.encodedLength(count) + 1)
            let written = data.withUnsafeBufferPointer { EVP_EncodeBlock(&expected, $0.baseAddress, Int32(count)) }
            let encoded = Base64.encode(data)
            #expect(encoded == String(decoding: expected[..<Int(written)], as: UTF8.self))
            #expect(Base64.decode(encoded) == data)
        }
    }

    @Test(arguments: ["Zg", "Zg=", "Z===", "=Zg=", "Zg==Zg==", "Zm9v!", "Zm 9v", "Zg==A"])
    func refused(_ text: String) {
        #expect(Base64.decode(text) == nil)
    }

    @Test("pieces split anywhere decode as the whole")
    func pieces() {
        let text = Array("aGVsbG8sIHdvcmxkIQ==".utf8)
        for cut in 0...text.count {
            var decoder = Base64.Decoder()
            var out: [UInt8] = []
            #expect(text[..<cut].withUnsafeBytes { decoder.decode($0, into: &out) })
            #expect(text[cut...].withUnsafeBytes { decoder.decode($0, into: &out) })
            #expect(decoder.finish())
            #expect(String(decoding: out, as: UTF8.self) == "hello, world!")
        }
    }
}
