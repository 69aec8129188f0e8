import CNGHTTP2
import Testing
@testable import HTTP2
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A request or response body held in memory; counts what the session reports as sent.
final class MemoryBody: DataSource {
    private let bytes: UnsafeMutableRawBufferPointer
    private let count: Int
    private var offered = 0
    private(set) var sent = 0

    init(_ content: [UInt8]) {
        count = content.count
        bytes = .allocate(byteCount: max(content.count, 1), alignment: 1)
        bytes.copyBytes(from: content)
        super.init()
    }

    deinit { bytes.deallocate() }

    override func pendingBytes(limit: Int) -> (count: Int, endsBody: Bool) {
        let ready = min(limit, count - offered)
        return (ready, offered + ready == count)
    }

    override func takePayload(count: Int) -> Payload {
        defer { offered += count }
        return .memory(UnsafeRawPointer(bytes.baseAddress! + offered))
    }

    override func payloadSent(count: Int) { sent += count }
}

/// Records what a session delivers.
final class Recorder: SessionDelegate {
    var headers: [StreamID: HeaderList] = [:]
    var headersEndedStream: [StreamID: Bool] = [:]
    var data: [StreamID: [UInt8]] = [:]
    var ended: Set<StreamID> = []
    var closed: [StreamID: UInt32] = [:]
    /// Open the window for received bytes at once (as if they left for their destination).
    var consumeAtOnce = false

    func session(_ session: Session, headers: HeaderList, stream: StreamID, endStream: Bool) {
        self.headers[stream] = headers
        headersEndedStream[stream] = endStream
    }

    func session(_ session: Session, data: UnsafeRawBufferPointer, stream: StreamID) {
        self.data[stream, default: []].append(contentsOf: data)
        if consumeAtOnce { session.consume(stream, data.count) }
    }

    func session(_ session: Session, endOfStream stream: StreamID) { ended.insert(stream) }

    func session(_ session: Session, closed stream: StreamID, errorCode: UInt32) { closed[stream] = errorCode }
}

/// Two sessions joined in memory: what one produces into its OutputQueue is copied out of the
/// queue's iovecs (as a writev would take it) and fed to the other.
final class Wire {
    let client: Session
    let server: Session
    let clientEvents = Recorder()
    let serverEvents = Recorder()
    private let clientQueue = OutputQueue()
    private let serverQueue = OutputQueue()
    private(set) var clientBytes = 0
    private(set) var serverBytes = 0

    init(settings: SessionSettings = SessionSettings()) throws {
        client = try Session(role: .client, settings: settings)
        server = try Session(role: .server, settings: settings)
        client.delegate = clientEvents
        server.delegate = serverEvents
    }

    /// Everything `session` has to say, as bytes on the wire. `chunk` limits one produce call
    /// and one "write", to exercise partial writes.
    private func drain(_ session: Session, _ queue: OutputQueue, chunk: Int) throws -> [UInt8] {
        var wire: [UInt8] = []
        while true {
            try session.produce(into: queue, limit: chunk)
            if queue.isEmpty { return wire }
            while !queue.isEmpty {
                let next = queue.nextWrite()
                #expect(next.pipe == nil, "a memory body produced a pipe segment")
                if next.pipe != nil { return wire }
                var budget = chunk
                var written = 0
                for index in 0..<next.vectorCount where budget > 0 {
                    let vector = queue.vectors[index]
                    let take = min(vector.iov_len, budget)
                    wire.append(contentsOf: UnsafeRawBufferPointer(start: vector.iov_base, count: take))
                    budget -= take
                    written += take
                }
                queue.advance(written)
            }
        }
    }

    /// Moves bytes both ways until neither side has anything to send.
    @discardableResult
    func pump(chunk: Int = 1 << 20, rounds: Int = 200) throws -> Int {
        for round in 0..<rounds {
            let toServer = try drain(client, clientQueue, chunk: chunk)
            if !toServer.isEmpty { try toServer.withUnsafeBytes { try server.receive($0) } }
            let toClient = try drain(server, serverQueue, chunk: chunk)
            if !toClient.isEmpty { try toClient.withUnsafeBytes { try client.receive($0) } }
            clientBytes += toServer.count
            serverBytes += toClient.count
            if toServer.isEmpty && toClient.isEmpty { return round }
        }
        Issue.record("the sessions did not settle in \(rounds) rounds")
        return rounds
    }
}

private func request(port: String?, path: String = "/portForward/default/web") -> [(String, String)] {
    var headers = [(":method", "POST"), (":scheme", "http"), (":authority", "127.0.0.1:10250"), (":path", path)]
    if let port { headers.append(("port", port)) }
    return headers
}

func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    var bytes = [UInt8](repeating: 0, count: count)
    for index in stride(from: 0, to: count, by: 8) {
        let value = generator.next()
        for offset in 0..<min(8, count - index) { bytes[index + offset] = UInt8(truncatingIfNeeded: value >> (8 * offset)) }
    }
    return bytes
}

@Suite("HTTP/2 sessions in memory")
struct SessionTests {
    @Test("A request with a port header reaches the server, and the answer comes back")
    func requestAndResponse() throws {
        let wire = try Wire()
        let body = MemoryBody(Array("hello, pod".utf8))
        let stream = try wire.client.submitRequest(request(port: "8080"), body: body)
        #expect(stream == 1)
        try wire.pump()

        let headers = try #require(wire.serverEvents.headers[stream])
        #expect(headers[":method"] == "POST")
        #expect(headers[":path"] == "/portForward/default/web")
        #expect(headers["port"] == "8080")
        #expect(wire.serverEvents.headersEndedStream[stream] == false)
        #expect(wire.serverEvents.data[stream] == Array("hello, pod".utf8))
        #expect(wire.serverEvents.ended.contains(stream))
        #expect(body.sent == 10)

        try wire.server.submitResponse(stream, headers: [(":status", "200")], body: StaticBody("hello, client"))
        try wire.pump()
        #expect(wire.clientEvents.headers[stream]?[":status"] == "200")
        #expect(wire.clientEvents.data[stream] == Array("hello, client\n".utf8.dropLast()))
        #expect(wire.clientEvents.ended.contains(stream))
        #expect(wire.clientEvents.closed[stream] == 0)
        #expect(wire.serverEvents.closed[stream] == 0)
    }

    @Test("An error answer: status, one-line body and END_STREAM")
    func errorAnswer() throws {
        let wire = try Wire()
        let stream = try wire.client.submitRequest(request(port: nil), body: nil)
        try wire.pump()
        #expect(wire.serverEvents.headers[stream]?["port"] == nil)
        #expect(wire.serverEvents.headersEndedStream[stream] == true)
        try wire.server.submitResponse(stream, headers: [(":status", "400"), ("content-type", "text/plain; charset=utf-8")],
                                       body: StaticBody("missing port header\n"))
        try wire.pump()
        #expect(wire.clientEvents.headers[stream]?[":status"] == "400")
        #expect(wire.clientEvents.data[stream].map { String(decoding: $0, as: UTF8.self) } == "missing port header\n")
        #expect(wire.clientEvents.closed[stream] == 0)
    }

    @Test("Many streams on one session keep their bytes apart")
    func manyStreams() throws {
        let wire = try Wire()
        wire.serverEvents.consumeAtOnce = true
        var payloads: [StreamID: [UInt8]] = [:]
        var bodies: [MemoryBody] = []
        for index in 0..<20 {
            let payload = randomBytes(1000 + index * 777)
            let body = MemoryBody(payload)
            bodies.append(body)
            let stream = try wire.client.submitRequest(request(port: "\(5000 + index)"), body: body)
            payloads[stream] = payload
        }
        try wire.pump(chunk: 4096)
        #expect(Set(payloads.keys).count == 20)
        #expect(payloads.keys.allSatisfy { $0 % 2 == 1 }, "client streams are odd")
        for (stream, payload) in payloads {
            #expect(wire.serverEvents.data[stream] == payload, "stream \(stream)")
            #expect(wire.serverEvents.ended.contains(stream))
            #expect(wire.serverEvents.headers[stream]?["port"] == "\(5000 + (Int(stream) - 1) / 2)")
        }
    }

    @Test("Flow control: the peer sends one stream window, and more only once bytes are consumed")
    func flowControl() throws {
        let settings = SessionSettings()
        let window = Int(settings.streamWindow)
        let wire = try Wire(settings: settings)
        let payload = randomBytes(3 * window + 12345)
        let body = MemoryBody(payload)
        let stream = try wire.client.submitRequest(request(port: "9000"), body: body)
        try wire.pump()
        // Nothing consumed: exactly one stream window arrived, and the sender stalls.
        #expect(wire.serverEvents.data[stream]?.count == window)
        #expect(!wire.serverEvents.ended.contains(stream))
        #expect(body.sent == window)

        // Consuming half a window does not yet starve anything: the rest arrives as it is consumed.
        var consumed = 0
        var rounds = 0
        while consumed < payload.count && rounds < 100 {
            let received = wire.serverEvents.data[stream]?.count ?? 0
            #expect(received - consumed <= window, "the peer overran the window")
            wire.server.consume(stream, received - consumed)
            consumed = received
            try wire.pump()
            rounds += 1
        }
        #expect(wire.serverEvents.data[stream] == payload)
        #expect(wire.serverEvents.ended.contains(stream))
        #expect(body.sent == payload.count)
    }

    @Test("RST_STREAM from the client reaches the server as a close with its code")
    func reset() throws {
        let wire = try Wire()
        let stream = try wire.client.submitRequest(request(port: "80"), body: MemoryBody(randomBytes(10)))
        try wire.pump()
        try wire.server.submitResponse(stream, headers: [(":status", "200")], body: MemoryBody([]))
        wire.client.reset(stream)
        try wire.pump()
        #expect(wire.serverEvents.closed[stream] == NGHTTP2_CANCEL.rawValue)
        #expect(wire.clientEvents.closed[stream] == NGHTTP2_CANCEL.rawValue)
    }

    @Test("GOAWAY ends both sessions' wish for I/O")
    func goaway() throws {
        let wire = try Wire()
        try wire.pump()
        #expect(wire.client.wantsRead && wire.server.wantsRead)
        wire.client.terminate()
        try wire.pump()
        #expect(!wire.client.wantsRead && !wire.client.wantsWrite)
        #expect(!wire.server.wantsWrite)
    }

    @Test("After an HTTP/1.1 upgrade, stream 1 belongs to the request and the server answers on it")
    func upgrade() throws {
        let settings = SessionSettings()
        let wire = try Wire(settings: settings)
        let payload = HTTPText.settingsPayload(settings)
        try wire.client.upgrade(settingsPayload: payload)
        try wire.server.upgrade(settingsPayload: payload)
        try wire.server.submitResponse(1, headers: [(":status", "200")], body: StaticBody("upgraded"))
        // A new stream after the upgrade is stream 3.
        let next = try wire.client.submitRequest(request(port: "7000"), body: MemoryBody(Array("x".utf8)))
        #expect(next == 3)
        try wire.pump()
        #expect(wire.clientEvents.headers[1]?[":status"] == "200")
        #expect(wire.clientEvents.data[1] == Array("upgraded".utf8))
        #expect(wire.serverEvents.headers[3]?["port"] == "7000")
        #expect(wire.serverEvents.data[3] == Array("x".utf8))
    }

    @Test("Garbage instead of a preface is a session error")
    func garbage() throws {
        let server = try Session(role: .server)
        let events = Recorder()
        server.delegate = events
        #expect(throws: HTTP2Error.self) {
            try Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8).withUnsafeBytes { try server.receive($0) }
        }
    }
}

@Suite("Output queue")
struct OutputQueueTests {
    @Test("Control bytes and payloads leave in order; advance tells the sources")
    func order() {
        let queue = OutputQueue()
        let body = MemoryBody(Array("PAYLOAD".utf8))
        Array("head".utf8).withUnsafeBytes { queue.append(bytes: $0.baseAddress!, count: 4) }
        Array("er".utf8).withUnsafeBytes { queue.append(bytes: $0.baseAddress!, count: 2) }
        queue.append(payload: body.takePayload(count: 7), count: 7, source: body)
        Array("tail".utf8).withUnsafeBytes { queue.append(bytes: $0.baseAddress!, count: 4) }
        #expect(queue.queuedBytes == 17)
        let next = queue.nextWrite()
        #expect(next.pipe == nil)
        // "head" and "er" share one segment; then the payload; then "tail".
        #expect(next.vectorCount == 3)
        var bytes: [UInt8] = []
        for index in 0..<next.vectorCount {
            bytes += UnsafeRawBufferPointer(start: queue.vectors[index].iov_base, count: queue.vectors[index].iov_len)
        }
        #expect(String(decoding: bytes, as: UTF8.self) == "headerPAYLOADtail")
        queue.advance(8)  // "header" and two bytes of the payload
        #expect(body.sent == 2)
        #expect(queue.queuedBytes == 9)
        let rest = queue.nextWrite()
        #expect(rest.vectorCount == 2)
        #expect(String(decoding: UnsafeRawBufferPointer(start: queue.vectors[0].iov_base, count: queue.vectors[0].iov_len), as: UTF8.self) == "YLOAD")
        queue.advance(9)
        #expect(body.sent == 7)
        #expect(queue.isEmpty)
        #expect(queue.nextWrite().vectorCount == 0)
    }
}
