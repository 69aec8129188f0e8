import XCTest
@testable import SPDY

final class SessionTests: XCTestCase {
    private var client: TestClient!
    private var recorder: Recorder!
    private var session: SPDYSession!

    override func setUp() {
        client = TestClient()
        recorder = Recorder()
        session = try! SPDYSession(delegate: recorder)
    }

    private let errorHeaders: HeaderBlock = ["streamtype": "error", "port": "80", "requestid": "0"]
    private let dataHeaders: HeaderBlock = ["streamtype": "data", "port": "80", "requestid": "0"]

    /// kubectl's exchange for one connection, answered as a kubelet does, fed in every two-way split.
    func testPortForwardExchangeInEverySplit() throws {
        let bytes = client.synStream(1, errorHeaders) + client.data(1, "", fin: true)
            + client.synStream(3, dataHeaders) + client.data(3, "GET / HTTP/1.0\r\n\r\n") + client.data(3, "", fin: true)
        let expected: [RecordedEvent] = [
            .synStream(1, errorHeaders, fin: false), .peerEnded(1),
            .synStream(3, dataHeaders, fin: false), .data(3, "GET / HTTP/1.0\r\n\r\n"), .peerEnded(3),
        ]
        for cut in 0...bytes.count {
            setUp()
            recorder.react = { session, event in
                if case .synStream(let stream, _, _, _, _) = event { try! session.synReply(stream: stream) }
            }
            try session.receive(Array(bytes[..<cut]))
            try session.receive(Array(bytes[cut...]))
            XCTAssertEqual(recorder.events, expected, "cut at \(cut)")
            XCTAssertEqual(try client.read(session.takeOutput()),
                           [.synReply(1, [:], fin: false), .synReply(3, [:], fin: false)], "cut at \(cut)")
        }
        // The server's end, in the order a kubelet uses: error stream, then data stream.
        try session.sendData(stream: 3, Array("HTTP/1.0 200 OK\r\n\r\n".utf8), fin: false)
        try session.finish(stream: 1)
        let header = try session.dataHeader(stream: 3, count: 0, fin: true)
        XCTAssertEqual(header.bytes, [0, 0, 0, 3, 1, 0, 0, 0])
        XCTAssertEqual(try client.read(session.takeOutput()),
                       [.data(3, "HTTP/1.0 200 OK\r\n\r\n", fin: false), .data(1, "", fin: true)])
        XCTAssertEqual(session.openStreams, 0, "both sides ended both streams")
        XCTAssertThrowsError(try session.dataHeader(stream: 3, count: 1, fin: false)) {
            XCTAssertEqual($0 as? SPDYError, .streamNotWritable(3))
        }
    }

    func testPingIsEchoedAndOursComesBack() throws {
        var bytes: [UInt8] = []
        FrameEncoder.ping(id: 1, to: &bytes)
        try session.receive(bytes)
        XCTAssertEqual(try client.read(session.takeOutput()), [.ping(1)])
        let id = session.ping()
        XCTAssertEqual(id, 2)
        XCTAssertEqual(try client.read(session.takeOutput()), [.ping(2)])
        bytes = []
        FrameEncoder.ping(id: 2, to: &bytes)
        try session.receive(bytes)
        XCTAssertEqual(session.pendingOutput, 0, "a reply is not echoed")
        XCTAssertEqual(recorder.events, [.ping(1, isReply: false), .ping(2, isReply: true)])
    }

    func testControlFramesAreReported() throws {
        var bytes = client.synStream(1, errorHeaders)
        FrameEncoder.settings([SettingsEntry(id: 7, value: 1000)], to: &bytes)
        FrameEncoder.windowUpdate(stream: 1, delta: 4096, to: &bytes)
        FrameEncoder.rstStream(stream: 1, status: .cancel, to: &bytes)
        FrameEncoder.goAway(lastGoodStream: 0, status: .ok, to: &bytes)
        try session.receive(bytes)
        XCTAssertEqual(recorder.events, [
            .synStream(1, errorHeaders, fin: false), .settings([SettingsEntry(id: 7, value: 1000)]),
            .windowUpdate(1, 4096), .reset(1, .cancel, byPeer: true), .goAway(0, .ok),
        ])
        XCTAssertFalse(session.isOpen(1))
        XCTAssertTrue(session.receivedGoAway)
    }

    /// Stream errors become RST_STREAM and the session goes on; session errors queue a GOAWAY
    /// and throw.
    func testStreamIDRules() throws {
        try session.receive(client.synStream(3, errorHeaders))
        // The same id again while it is open: a stream error.
        try session.receive(client.synStream(3, dataHeaders))
        XCTAssertEqual(recorder.events.last, .reset(3, .protocolError, byPeer: false))
        // DATA on one this side reset (in flight: dropped quietly), and on a stream never opened.
        try session.receive(client.synStream(5, errorHeaders))
        session.reset(stream: 5)
        try session.receive(client.data(5, "late"))
        try session.receive(client.data(9, "x"))
        XCTAssertEqual(try client.read(session.takeOutput()),
                       [.rst(3, .protocolError), .rst(5, .cancel), .rst(9, .invalidStream)])
        // Going backwards ends the session.
        XCTAssertThrowsError(try session.receive(client.synStream(7, errorHeaders))) {
            XCTAssertEqual($0 as? SPDYError, .invalidStreamID(7, "not above the last stream 9"))
        }
        XCTAssertEqual(try client.read(session.takeOutput()), [.goAway(9, .protocolError)])
        XCTAssertThrowsError(try session.receive([UInt8]()), "a failed session stays failed")
    }

    /// FuzzSPDYSession found this: DATA (or HEADERS) on a stream the peer had not opened got
    /// RST_STREAM INVALID_STREAM, and a SYN_STREAM for the same id afterwards was accepted, so
    /// the peer read a SYN_REPLY and DATA on a stream it had been told was reset.
    func testStreamReportedResetCannotBeOpenedLater() throws {
        for useHeaders in [false, true] {
            setUp()
            let synStream = client.synStream(1, errorHeaders)
            let early = useHeaders ? client.headers(5, ["x": "1"]) : client.data(5, "", fin: true)
            recorder.react = { session, event in
                if case .synStream(let stream, _, _, _, _) = event { try! session.synReply(stream: stream) }
            }
            try session.receive(synStream + early)
            XCTAssertEqual(try client.read(session.takeOutput()), [.synReply(1, [:], fin: false), .rst(5, .invalidStream)])
            XCTAssertThrowsError(try session.receive(client.synStream(5, dataHeaders))) {
                XCTAssertEqual($0 as? SPDYError, .invalidStreamID(5, "not above the last stream 5"))
            }
            XCTAssertEqual(try client.read(session.takeOutput()), [.goAway(5, .protocolError)])
            XCTAssertEqual(recorder.events, [.synStream(1, errorHeaders, fin: false)])
        }
    }

    func testSessionErrorsEndTheSession() throws {
        let versionTwo: [UInt8] = [0x80, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1]
        let badPing: [UInt8] = [0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x02, 0, 1]
        let table: [(String, [UInt8], SPDYError)] = [
            ("even stream from a client", client.synStream(2, errorHeaders), .invalidStreamID(2, "a client's streams are odd")),
            ("version 2", versionTwo, .unsupportedVersion(2)),
            ("short PING", badPing, .invalidFrameLength(type: 6, length: 2)),
            ("DATA on stream 0", [0, 0, 0, 0, 0, 0, 0, 1, 0x41], .dataOnStreamZero),
        ]
        for (name, bytes, expected) in table {
            setUp()
            XCTAssertThrowsError(try session.receive(bytes), name) { XCTAssertEqual($0 as? SPDYError, expected, name) }
            XCTAssertEqual(try client.read(session.takeOutput()), [.goAway(0, .protocolError)], name)
        }
    }

    func testHeaderBombEndsTheSession() throws {
        var limits = SPDYLimits()
        limits.maxHeaderBlockSize = 1024
        session = try SPDYSession(limits: limits, delegate: recorder)
        let bomb: HeaderBlock = ["x": String(repeating: "a", count: 100_000)]
        let bytes = client.synStream(1, bomb)
        XCTAssertLessThan(bytes.count, 1024)
        XCTAssertThrowsError(try session.receive(bytes)) {
            XCTAssertEqual($0 as? SPDYError, .headerBlockTooLarge(limit: 1024))
        }
        XCTAssertEqual(recorder.events, [])
    }

    func testConcurrentStreamLimitRefuses() throws {
        var limits = SPDYLimits()
        limits.maxConcurrentStreams = 1
        session = try SPDYSession(limits: limits, delegate: recorder)
        try session.receive(client.synStream(1, errorHeaders) + client.synStream(3, dataHeaders))
        XCTAssertEqual(recorder.events, [.synStream(1, errorHeaders, fin: false)])
        XCTAssertEqual(try client.read(session.takeOutput()), [.rst(3, .refusedStream)])
    }

    /// A connection that splices a DATA payload: it reads the head, splices `dataRemaining` bytes,
    /// and tells the session, which reports the FIN.
    func testSplicedPayload() throws {
        try session.receive(client.synStream(1, dataHeaders))
        let frame = client.data(1, String(repeating: "z", count: 5000), fin: true)
        try session.receive(Array(frame[..<8]))
        XCTAssertEqual(session.dataStream, 1)
        XCTAssertEqual(session.dataRemaining, 5000)
        try session.receive(Array(frame[8..<108]))
        XCTAssertEqual(session.dataRemaining, 4900)
        try session.skipData(4900)
        XCTAssertEqual(session.dataRemaining, 0)
        XCTAssertEqual(session.headMissing, 8)
        XCTAssertEqual(recorder.events, [.synStream(1, dataHeaders, fin: false), .data(1, String(repeating: "z", count: 100)),
                                         .peerEnded(1)])
    }

    /// The owner resets a stream while its DATA frame is still arriving: the rest is not reported.
    func testResetDuringAFrameDropsItsRest() throws {
        try session.receive(client.synStream(1, dataHeaders))
        let frame = client.data(1, "0123456789", fin: true)
        try session.receive(Array(frame[..<12]))
        session.reset(stream: 1)
        try session.receive(Array(frame[12...]))
        XCTAssertEqual(recorder.events, [.synStream(1, dataHeaders, fin: false), .data(1, "0123")])
        XCTAssertEqual(session.discardRemaining, 0)
    }

    func testOutputDrainsInPieces() throws {
        for _ in 0..<3 { _ = session.ping() }
        let total = session.pendingOutput
        XCTAssertEqual(total, 36)
        var buffer = [UInt8](repeating: 0, count: 10)
        var drained: [UInt8] = []
        while session.pendingOutput > 0 {
            let count = buffer.withUnsafeMutableBytes { session.produce(into: $0) }
            drained += buffer[..<count]
        }
        XCTAssertEqual(try client.read(drained), [.ping(2), .ping(4), .ping(6)])
    }

    func testGoAwayIgnoresNewStreams() throws {
        try session.receive(client.synStream(1, errorHeaders))
        session.goAway()
        try session.receive(client.synStream(3, dataHeaders))
        XCTAssertEqual(recorder.events, [.synStream(1, errorHeaders, fin: false)])
        XCTAssertEqual(try client.read(session.takeOutput()), [.goAway(1, .ok)])
    }
}
