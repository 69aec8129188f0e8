import Foundation
import Testing
import WebSocket
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// websocket-client (Python; the official Kubernetes client's WebSocket library), which was not
/// written here, against a tiny server in this test: plain blocking sockets on 127.0.0.1, one
/// connection, and this module's codec.
@Suite("WebSocket against a real peer (websocket-client)", .serialized)
struct PeerTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let python = root + "/.venv/bin/python"
    static let script = root + "/Tests/Peers/wspeer.py"

    @Test("the SPDY tunnel: handshake, masked binary both ways (100 KiB, fragmented), ping/pong, close")
    func tunnel() throws {
        let (result, server) = try run(mode: "tunnel")
        // websocket-client reports the subprotocol lowercased; it checked it against its offer.
        #expect((result["subprotocol"] as? String)?.lowercased() == TunnelSubprotocol.spdy.lowercased())
        let echoed = (result["echoed"] as? [[Any]] ?? []).map { "\($0[0]) \($0[1] as? Bool == true)" }
        #expect(echoed == ["small true", "empty true", "100KiB true", "fragmented true"])
        #expect(result["pong"] as? Bool == true)
        let close = result["close"] as? [Any]
        #expect(close?.first as? Bool == true && close?.last as? Int == 1000)
        #expect(server.pongs == ["server-ping"])
        #expect(server.close == "1000 done")
        #expect(server.largest == 100 * 1024)
    }

    @Test("the channel protocol: ports announced, data on a channel, close")
    func channel() throws {
        let (result, server) = try run(mode: "channel")
        #expect(result["subprotocol"] as? String == "v4.channel.k8s.io")
        #expect((result["announcements"] as? [[Int]]) == [[0, 0x90, 0x1F], [1, 0x90, 0x1F]])
        #expect(result["data"] as? String == "\u{0}echo: GET / HTTP/1.0\r\n\r\n")
        #expect(server.close == "1000 ")
    }

    struct ServerSaw {
        var pongs: [String] = []
        var close = ""
        var largest = 0
    }

    private func run(mode: String) throws -> ([String: Any], ServerSaw) {
        guard access(Self.python, X_OK) == 0 else {
            let reason = "\(Self.python) is missing: run `make venv` (it installs websocket-client)"
            Issue.record(Comment(rawValue: "skipped: \(reason)"), severity: .warning)
            try Test.cancel(Comment(rawValue: reason))
        }
        let listener = try Socket.listen()
        defer { close(listener.fd) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.python)
        process.arguments = [Self.script, "\(listener.port)", mode]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        defer { if process.isRunning { process.terminate() } }

        let connection = try Socket.accept(listener.fd)
        defer { close(connection) }
        let saw = try serve(connection, mode: mode)
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard let line = text.split(separator: "\n").last,
              let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw PeerError("wspeer.py \(mode) printed no result (status \(process.terminationStatus)): \(text)")
        }
        return (object, saw)
    }

    /// The server: the handshake, then echo each message back (large ones in three frames).
    private func serve(_ fd: Int32, mode: String) throws -> ServerSaw {
        var head: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while !head.containsHeadEnd {
            let count = try Socket.read(fd, &chunk)
            guard count > 0, head.count < 16 * 1024 else { throw PeerError("no request head") }
            head += chunk[..<count]
        }
        let lines = String(decoding: head, as: UTF8.self).components(separatedBy: "\r\n")
        let requestLine = lines[0].split(separator: " ")
        let fields = lines.dropFirst().compactMap { line -> (name: String, value: String)? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<colon]), String(line[line.index(after: colon)...]))
        }
        let accepted = try WebSocketHandshake.validate(method: String(requestLine[0]), fields: fields).get()
        try Socket.write(fd, Array(WebSocketHandshake.switchingProtocols(accepted).utf8))

        var saw = ServerSaw()
        if mode == "channel" {
            let query = requestLine[1].split(separator: "?", maxSplits: 1).last ?? ""
            let ports = try ChannelPorts.parse(query: query).get()
            var channels = ChannelProtocol(encoding: ChannelEncoding(subprotocol: accepted.subprotocol ?? "") ?? .binary, ports: ports)
            try Socket.write(fd, channels.portAnnouncements())
            var events: [ChannelEvent] = []
            while !channels.isClosed {
                let count = try Socket.read(fd, &chunk)
                guard count > 0 else { throw PeerError("the peer closed without a close frame") }
                events.removeAll(keepingCapacity: true)
                var reply: [UInt8] = []
                chunk.withUnsafeMutableBytes { channels.receive(UnsafeMutableRawBufferPointer(rebasing: $0[..<count]), into: &events) }
                for event in events {
                    switch event {
                    case .data(let port, let range):
                        let echo = Array("echo: ".utf8) + chunk[range]
                        echo.withUnsafeBytes { channels.appendData(port: port, $0, to: &reply) }
                    case .decoded(let port, let data):
                        data.withUnsafeBytes { channels.appendData(port: port, $0, to: &reply) }
                    case .control(let frame):
                        if case .close(let code, let reason) = frame { saw.close = "\(code ?? 0) \(reason)" }
                        if case .failed(let error) = frame { Issue.record("the server failed: \(error)") }
                        reply += frame.answer ?? []
                    }
                }
                try Socket.write(fd, reply)
            }
            return saw
        }

        try Socket.write(fd, FrameWriter.ping(Array("server-ping".utf8)))
        var reader = FrameReader(role: .server)
        var events: [FrameEvent] = []
        var message: [UInt8] = []
        while !reader.isClosed {
            let count = try Socket.read(fd, &chunk)
            guard count > 0 else { throw PeerError("the peer closed without a close frame") }
            events.removeAll(keepingCapacity: true)
            chunk.withUnsafeMutableBytes { reader.receive(UnsafeMutableRawBufferPointer(rebasing: $0[..<count]), into: &events) }
            for event in events {
                switch event {
                case .messageStart:
                    message.removeAll()
                case .payload(let range):
                    message += chunk[range]
                case .messageEnd:
                    saw.largest = max(saw.largest, message.count)
                    try echo(fd, message)
                case .pong(let payload):
                    saw.pongs.append(String(decoding: payload, as: UTF8.self))
                case .close(let code, let reason):
                    saw.close = "\(code ?? 0) \(reason)"
                    try Socket.write(fd, event.answer ?? [])
                case .ping, .failed:
                    if case .failed(let error) = event { Issue.record("the server failed: \(error)") }
                    try Socket.write(fd, event.answer ?? [])
                }
            }
        }
        return saw
    }

    /// A message back as BINARY: small ones in one frame, large ones in three (the middle one
    /// empty), each header written apart from its payload as the relay will.
    private func echo(_ fd: Int32, _ message: [UInt8]) throws {
        guard message.count >= 1000 else {
            try Socket.write(fd, ByteStream.header(payloadLength: message.count) + message)
            return
        }
        let cut = message.count / 3
        try Socket.write(fd, FrameWriter.header(.binary, fin: false, payloadLength: cut))
        try Socket.write(fd, Array(message[..<cut]))
        try Socket.write(fd, FrameWriter.header(.continuation, fin: false, payloadLength: 0))
        try Socket.write(fd, FrameWriter.header(.continuation, payloadLength: message.count - cut))
        try Socket.write(fd, Array(message[cut...]))
    }
}

struct PeerError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension [UInt8] {
    fileprivate var containsHeadEnd: Bool {
        count >= 4 && (0...(count - 4)).contains { self[$0] == 13 && self[$0 + 1] == 10 && self[$0 + 2] == 13 && self[$0 + 3] == 10 }
    }
}

/// Blocking sockets with a deadline on every wait, so a peer that hangs fails the test instead.
enum Socket {
    static let timeoutMilliseconds: Int32 = 20_000

    static func listen() throws -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw PeerError("socket: errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && Glibc.listen(fd, 1) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else { close(fd); throw PeerError("bind/listen: errno \(errno)") }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    static func wait(_ fd: Int32, _ events: Int32) throws {
        var probe = pollfd(fd: fd, events: Int16(events), revents: 0)
        guard poll(&probe, 1, timeoutMilliseconds) == 1 else { throw PeerError("the peer went silent") }
    }

    static func accept(_ listener: Int32) throws -> Int32 {
        try wait(listener, Int32(POLLIN))
        let fd = Glibc.accept(listener, nil, nil)
        guard fd >= 0 else { throw PeerError("accept: errno \(errno)") }
        return fd
    }

    static func read(_ fd: Int32, _ buffer: inout [UInt8]) throws -> Int {
        try wait(fd, Int32(POLLIN))
        let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard count >= 0 else { throw PeerError("read: errno \(errno)") }
        return count
    }

    static func write(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            try wait(fd, Int32(POLLOUT))
            let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            guard written > 0 else { throw PeerError("write: errno \(errno)") }
            offset += written
        }
    }
}
