import CNGHTTP2
import Testing
@testable import HTTP2

/// A body with nothing ready until `open` is set: nghttp2 defers the stream meanwhile.
final class GatedBody: DataSource {
    private let content: StaticBody
    var open = false

    init(_ text: String) {
        content = StaticBody(text)
        super.init()
    }

    override func pendingBytes(limit: Int) -> (count: Int, endsBody: Bool) {
        open ? content.pendingBytes(limit: limit) : (0, false)
    }

    override func takePayload(count: Int) -> Payload { content.takePayload(count: count) }
}

private let request: [(String, String)] = [(":method", "POST"), (":scheme", "http"), (":authority", "relay"),
                                            (":path", "/portForward/default/web"), ("port", "80")]

/// Collects what a session logs.
private final class Lines {
    var all: [String] = []
    init(_ session: Session) { session.log = { [unowned self] line in all.append(line) } }
}

/// Every nghttp2 call whose result used to be dropped: a failure is thrown, logged, or ends the
/// session, and the ones that are normal outcomes say so to the caller.
@Suite("HTTP/2 sessions: nghttp2's errors go somewhere")
struct SessionErrorTests {
    @Test("Settings nghttp2 refuses fail the session's creation instead of being left out")
    func refusedSettings() {
        var tinyFrames = SessionSettings()
        tinyFrames.maxFrameSize = 1000
        #expect(throws: HTTP2Error.self) { try Session(role: .server, settings: tinyFrames) }
        var negativeWindow = SessionSettings()
        negativeWindow.connectionWindow = -1
        #expect(throws: HTTP2Error.self) { try Session(role: .client, settings: negativeWindow) }
        #expect(throws: Never.self) { try Session(role: .client, settings: SessionSettings()) }
    }

    @Test("resume says whether nghttp2 was waiting for the body: not for an unknown stream, yes for a deferred one")
    func resume() throws {
        let wire = try Wire()
        let lines = Lines(wire.client)
        #expect(!wire.client.resume(99))
        let body = GatedBody("late bytes")
        let stream = try wire.client.submitRequest(request, body: body)
        try wire.pump()
        #expect(wire.serverEvents.headers[stream] != nil)
        #expect(wire.serverEvents.data[stream] == nil)
        body.open = true
        #expect(wire.client.resume(stream), "the body was deferred")
        try wire.pump()
        #expect(wire.serverEvents.data[stream] == Array("late bytes".utf8))
        #expect(wire.serverEvents.ended.contains(stream))
        #expect(!wire.client.resume(stream), "the body has ended: nothing waits for it")
        #expect(lines.all.isEmpty, "a resume nghttp2 was not waiting for is no error: \(lines.all)")
        #expect(wire.client.failure == nil)
    }

    @Test("Consuming more than arrived is logged and opens the window only by what arrived")
    func overConsume() throws {
        var settings = SessionSettings()
        settings.streamWindow = 65_535
        let wire = try Wire(settings: settings)
        let lines = Lines(wire.server)
        let stream = try wire.client.submitRequest(request, body: MemoryBody(randomBytes(200_000)))
        try wire.pump()
        #expect(wire.serverEvents.data[stream]?.count == 65_535)

        wire.server.consume(stream, 1_000_000)
        #expect(lines.all.count == 1)
        #expect(lines.all.first?.contains("1000000 bytes consumed, but only 65535") == true, "\(lines.all)")
        try wire.pump()
        #expect(wire.serverEvents.data[stream]?.count == 2 * 65_535)

        // One byte more is below half the window: no WINDOW_UPDATE, so the sender stays stalled.
        // Had the excess been kept as credit, this would reopen the whole window.
        wire.server.consume(stream, 1)
        try wire.pump()
        #expect(wire.serverEvents.data[stream]?.count == 2 * 65_535)
        #expect(nghttp2_session_get_stream_remote_window_size(wire.client.raw, stream) == 0)
        #expect(lines.all.count == 1)
        #expect(wire.server.failure == nil)
    }

    @Test("Consuming on stream 0 and resetting stream 0 are logged with the call; the session goes on")
    func invalidStream() throws {
        let wire = try Wire()
        let lines = Lines(wire.client)
        wire.client.consume(0, 10)
        wire.client.reset(0)
        #expect(lines.all.count == 2)
        #expect(lines.all.first?.contains("nghttp2_session_consume_stream") == true, "\(lines.all)")
        #expect(lines.all.last?.contains("nghttp2_submit_rst_stream") == true, "\(lines.all)")
        #expect(wire.client.failure == nil)
        let stream = try wire.client.submitRequest(request, body: MemoryBody(Array("still fine".utf8)))
        try wire.pump()
        #expect(wire.serverEvents.data[stream] == Array("still fine".utf8))
    }

    @Test("A response to a stream that closed first is logged as not sent, and its body is let go")
    func responseToClosedStream() throws {
        let wire = try Wire()
        let lines = Lines(wire.server)
        let stream = try wire.client.submitRequest(request, body: MemoryBody(Array("x".utf8)))
        try wire.pump()
        wire.client.reset(stream)
        try wire.pump()
        #expect(wire.serverEvents.closed[stream] == NGHTTP2_CANCEL.rawValue)

        weak var released: MemoryBody?
        do {
            let body = MemoryBody(Array("too late".utf8))
            released = body
            try wire.server.submitResponse(stream, headers: [(":status", "200")], body: body)
        }
        #expect(released != nil, "the session holds the body while the response is queued")
        try wire.pump()
        #expect(released == nil, "the body of a response that can never be sent stays held")
        #expect(lines.all.contains { $0.hasPrefix("stream \(stream): frame type 1 not sent") }, "\(lines.all)")
        #expect(wire.clientEvents.headers[stream] == nil)
    }

    @Test("A fatal error where nothing can throw ends the session at the next receive or produce; others do not")
    func fatalEndsSession() throws {
        let wire = try Wire()
        let lines = Lines(wire.client)
        #expect(!wire.client.check("nghttp2_submit_ping", NGHTTP2_ERR_INVALID_ARGUMENT.rawValue))
        #expect(wire.client.failure == nil)
        try wire.pump()

        #expect(!wire.client.check("nghttp2_submit_ping", NGHTTP2_ERR_NOMEM.rawValue))
        let failure = try #require(wire.client.failure)
        #expect(failure.description.contains("nghttp2_submit_ping"))
        #expect(lines.all.count == 2)
        #expect(throws: HTTP2Error.self) { try wire.client.produce(into: OutputQueue(), limit: 1 << 20) }
        #expect(throws: HTTP2Error.self) { try [UInt8](repeating: 0, count: 9).withUnsafeBytes { try wire.client.receive($0) } }
    }
}
