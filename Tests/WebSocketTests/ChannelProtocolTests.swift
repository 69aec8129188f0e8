import Testing
import WebSocket

@Suite("ByteStream: SPDY inside a WebSocket")
struct ByteStreamTests {
    /// The stream's bytes and the other events, after reading `wire` cut at `cut`.
    private func stream(_ wire: [UInt8], cut: Int) -> (bytes: [UInt8], others: [FrameEvent]) {
        var stream = ByteStream()
        var events: [FrameEvent] = []
        var data: [UInt8] = []
        var others: [FrameEvent] = []
        for piece in [Array(wire[..<cut]), Array(wire[cut...])] {
            var buffer = piece
            events.removeAll()
            buffer.withUnsafeMutableBytes { raw in
                stream.receive(raw, into: &events)
                for event in events {
                    if case .payload(let range) = event { data += raw[range] } else { others.append(event) }
                }
            }
        }
        return (data, others)
    }

    @Test("message boundaries mean nothing: the binary payloads are one stream")
    func concatenated() {
        let wire = wireFrame(.binary, bytes("SPDY fr")) + wireFrame(.binary, bytes("ame, "), fin: false)
            + wireFrame(.ping, bytes("k")) + wireFrame(.continuation, bytes("split")) + wireFrame(.binary, [])
            + wireFrame(.close, [0x03, 0xE8])
        for cut in 0...wire.count {
            let (data, others) = stream(wire, cut: cut)
            #expect(String(decoding: data, as: UTF8.self) == "SPDY frame, split")
            #expect(others == [.ping(bytes("k")), .close(code: 1000, reason: "")])
        }
    }

    @Test("a text message is refused with 1003 and ends the reading")
    func text() {
        let wire = wireFrame(.binary, bytes("ok")) + wireFrame(.text, bytes("no")) + wireFrame(.binary, bytes("late"))
        let (data, others) = stream(wire, cut: 0)
        #expect(data == bytes("ok"))
        #expect(others == [.failed(.unsupportedMessage("a text message in the SPDY tunnel"))])
        #expect(others.first?.answer == FrameWriter.close(code: 1003))
    }

    @Test("outgoing bytes go as BINARY frames, header apart")
    func outgoing() {
        #expect(ByteStream.header(payloadLength: 5) == [0x82, 5])
        #expect(ByteStream.header(payloadLength: 40_000) == [0x82, 126, 0x9C, 0x40])
    }

    @Test("the client's side: its frames masked (a server reads them back), the server's read unmasked")
    func clientSide() {
        // A client's message: the header with the key, the payload masked in place.
        var header = [UInt8](repeating: 0, count: 14)
        let length = header.withUnsafeMutableBytes { ByteStream.header(payloadLength: 5, mask: 0x0102_0304, into: $0) }
        #expect(Array(header[..<length]) == [0x82, 0x85, 1, 2, 3, 4])
        var payload = bytes("hello")
        var mask = Mask(key: 0x0102_0304)
        payload.withUnsafeMutableBytes { mask.apply($0) }
        // A pong in answer to the server's ping, masked as a client must.
        let pong = FrameWriter.masked(FrameWriter.pong(bytes("k")), key: 0xA0B0_C0D0)
        #expect(Array(pong[..<6]) == [0x8A, 0x81, 0xA0, 0xB0, 0xC0, 0xD0])
        var server = ByteStream()
        var wire = Array(header[..<length]) + payload + pong
        var events: [FrameEvent] = []
        var read: [UInt8] = []
        wire.withUnsafeMutableBytes { raw in
            server.receive(raw, into: &events)
            for event in events { if case .payload(let range) = event { read += raw[range] } }
        }
        #expect(read == bytes("hello"))
        #expect(events.contains(.pong(bytes("k"))))
        // The client reads the server's unmasked frames, and refuses masked ones (RFC 6455 5.1).
        var client = ByteStream(role: .client)
        var fromServer = ByteStream.header(payloadLength: 2) + bytes("ok") + wireFrame(.binary, bytes("no"))
        events.removeAll()
        read.removeAll()
        fromServer.withUnsafeMutableBytes { raw in
            client.receive(raw, into: &events)
            for event in events { if case .payload(let range) = event { read += raw[range] } }
        }
        #expect(read == bytes("ok"))
        #expect(events.contains { if case .failed = $0 { true } else { false } })
    }
}

struct PortsCase: Sendable, CustomTestStringConvertible {
    var query: String
    var expected: String
    var testDescription: String { query.isEmpty ? "(empty)" : query }
}

@Suite("The channel protocol, v4.channel.k8s.io and v4.base64.channel.k8s.io")
struct ChannelProtocolTests {
    static let portCases: [PortsCase] = [
        PortsCase(query: "ports=80", expected: "80"),
        PortsCase(query: "ports=80,81", expected: "80 81"),
        PortsCase(query: "ports=80%2C8080&timeout=5s", expected: "80 8080"),
        PortsCase(query: "ports=1&ports=65535", expected: "1 65535"),
        PortsCase(query: "port=80&port=81", expected: "80 81"),
        PortsCase(query: "ports=80,80", expected: "80 80"),
        PortsCase(query: "", expected: "the request names no port: add ?ports=PORT[,PORT...]"),
        PortsCase(query: "timeout=5s", expected: "the request names no port: add ?ports=PORT[,PORT...]"),
        PortsCase(query: "ports=0", expected: "\"0\" is not a port (1-65535)"),
        PortsCase(query: "ports=65536", expected: "\"65536\" is not a port (1-65535)"),
        PortsCase(query: "ports=80,,81", expected: "\"\" is not a port (1-65535)"),
        PortsCase(query: "ports=+80", expected: "\"+80\" is not a port (1-65535)"),
        PortsCase(query: "ports=http", expected: "\"http\" is not a port (1-65535)"),
        PortsCase(query: "ports=000080", expected: "\"000080\" is not a port (1-65535)"),
        PortsCase(query: "ports=" + (1...33).map(String.init).joined(separator: ","),
                  expected: "the request names 33 ports, more than the 32 allowed"),
    ]

    @Test(arguments: portCases)
    func ports(_ testCase: PortsCase) {
        switch ChannelPorts.parse(query: testCase.query) {
        case .success(let ports): #expect(ports.map(String.init).joined(separator: " ") == testCase.expected)
        case .failure(let error): #expect("\(error)" == testCase.expected)
        }
    }

    @Test("subprotocols name the encodings")
    func subprotocols() {
        #expect(ChannelEncoding(subprotocol: "v4.channel.k8s.io") == .binary)
        #expect(ChannelEncoding(subprotocol: "v4.base64.channel.k8s.io") == .base64)
        #expect(ChannelEncoding(subprotocol: "channel.k8s.io") == nil)
    }

    @Test("the server first writes each port, little-endian, on both of its channels")
    func announcements() {
        let binary = ChannelProtocol(encoding: .binary, ports: [80, 8080]).portAnnouncements()
        #expect(binary == [0x82, 3, 0, 80, 0, 0x82, 3, 1, 80, 0, 0x82, 3, 2, 0x90, 0x1F, 0x82, 3, 3, 0x90, 0x1F])
        let text = ChannelProtocol(encoding: .base64, ports: [8080]).portAnnouncements()
        // 8080 = 0x1F90: bytes 90 1F, base64 "kB8=".
        #expect(text == [0x81, 5] + bytes("0kB8=") + [0x81, 5] + bytes("1kB8="))
    }

    /// (port, bytes) and control events after reading `wire` cut at `cut`.
    private func channel(_ encoding: ChannelEncoding, ports: [UInt16], _ wire: [UInt8], cut: Int) -> [String] {
        var channels = ChannelProtocol(encoding: encoding, ports: ports)
        var words: [String] = []
        var events: [ChannelEvent] = []
        for piece in [Array(wire[..<cut]), Array(wire[cut...])] {
            var buffer = piece
            events.removeAll()
            buffer.withUnsafeMutableBytes { raw in
                channels.receive(raw, into: &events)
                for event in events {
                    switch event {
                    case .data(let port, let range): words.append("\(port) \(String(decoding: raw[range], as: UTF8.self))")
                    case .decoded(let port, let data): words.append("\(port) \(String(decoding: data, as: UTF8.self))")
                    case .control(let frame): words.append("\(frame)")
                    }
                }
            }
        }
        // Where a read cut a message is not the protocol's business: join a port's adjacent pieces.
        var joined: [String] = []
        for word in words {
            if let last = joined.last, last.first == word.first, last.first?.isNumber == true {
                joined[joined.count - 1] = last + word.dropFirst(2)
            } else {
                joined.append(word)
            }
        }
        return joined
    }

    @Test("binary: the first byte of each message is its channel; errors, unknown and empty ones are ignored")
    func binary() {
        let wire = wireFrame(.binary, [0] + bytes("GET / HTTP/1.0")) + wireFrame(.binary, [2] + bytes("to 81"))
            + wireFrame(.binary, [1] + bytes("client error text")) + wireFrame(.binary, [9] + bytes("nobody"))
            + wireFrame(.binary, []) + wireFrame(.binary, [2]) + wireFrame(.binary, [0], fin: false)
            + wireFrame(.continuation, bytes("frag"), fin: false) + wireFrame(.continuation, bytes("mented"))
            + wireFrame(.close, [0x03, 0xE8])
        for cut in 0...wire.count {
            #expect(channel(.binary, ports: [80, 81], wire, cut: cut)
                == ["0 GET / HTTP/1.0", "1 to 81", "0 fragmented", "close(code: Optional(1000), reason: \"\")"], "cut \(cut)")
        }
    }

    @Test("base64: text messages, the channel as a digit, the payload decoded across pieces")
    func base64() {
        let wire = wireFrame(.text, bytes("0aGVsbG8sIHdvcmxkIQ==")) + wireFrame(.text, bytes("2Yg=="))
            + wireFrame(.text, bytes("1ZXJyb3I=")) + wireFrame(.text, bytes("0Zm9v"), fin: false)
            + wireFrame(.continuation, bytes("YmFy"))
        for cut in 0...wire.count {
            #expect(channel(.base64, ports: [80, 81], wire, cut: cut) == ["0 hello, world!", "1 b", "0 foobar"], "cut \(cut)")
        }
    }

    @Test(arguments: ["0Zm9", "0Zm9v!", "0Zg==Zg=="])
    func badBase64(_ message: String) {
        let words = channel(.base64, ports: [80], wireFrame(.text, bytes(message)), cut: 0)
        #expect(words.last?.hasPrefix("failed(a channel message") == true, "\(words)")
        // Only the whole groups before the bad character ("Zm9v", "Zg==") get through.
        #expect(words.dropLast() == (message == "0Zm9" ? [] : [message == "0Zm9v!" ? "0 foo" : "0 f"]), "\(words)")
        #expect(FrameEvent.failed(.invalidPayload("")).answer == FrameWriter.close(code: 1007))
    }

    /// FuzzChannelProtocol found this: at once, a bad character dropped the whole groups before it
    /// in the same read, which a read cut before it had passed on already.
    @Test("base64: a bad character fails the same way wherever the reads cut the message")
    func badBase64AnyCut() {
        let wire = wireFrame(.text, bytes("0Zm9vYmFy!eA=="))
        for cut in 0...wire.count {
            #expect(channel(.base64, ports: [80], wire, cut: cut) == ["0 foobar", "failed(a channel message that is not base64)"],
                    "cut \(cut)")
        }
    }

    @Test("outgoing: each encoding's messages, split at the limit, and a binary prefix for payloads sent in place")
    func outgoing() {
        let limited = ChannelProtocol(encoding: .binary, ports: [80, 81], limits: ChannelLimits(maxBytesPerMessage: 3))
        var out: [UInt8] = []
        bytes("abcde").withUnsafeBytes { limited.appendData(port: 1, $0, to: &out) }
        #expect(out == [0x82, 4, 2] + bytes("abc") + [0x82, 3, 2] + bytes("de"))
        #expect(limited.dataPrefix(port: 1, payloadLength: 200) == [0x82, 126, 0, 201, 2])
        #expect(limited.errorMessage(port: 0, "refused") == [0x82, 4, 1] + bytes("ref"))

        let text = ChannelProtocol(encoding: .base64, ports: [80])
        out = []
        bytes("hello").withUnsafeBytes { text.appendData(port: 0, $0, to: &out) }
        #expect(out == [0x81, 9] + bytes("0aGVsbG8="))
        #expect(text.errorMessage(port: 0, "no") == [0x81, 5] + bytes("1bm8="))
    }
}
