import Testing
@testable import SPDY

/// The client role of `SPDYSession` (`portforward forward --protocol spdy`), against the server
/// role, joined in memory: what one writes the other reads, in any split.
@Suite("SPDY client session")
struct ClientSessionTests {
    let client: SPDYSession
    let server: SPDYSession
    let clientEvents = Recorder()
    let serverEvents = Recorder()

    init() throws {
        client = try SPDYSession(role: .client, delegate: clientEvents)
        server = try SPDYSession(role: .server, delegate: serverEvents)
        // A kubelet's logic: every stream is answered at once.
        serverEvents.react = { session, event in
            if case .synStream(let stream, _, _, _, _) = event { try! session.synReply(stream: stream) }
        }
    }

    /// Moves what `from` wrote into `to`, cut at `cut` (a position in the bytes, clamped).
    private func pass(_ from: SPDYSession, to: SPDYSession, cut: Int = 0) throws {
        let bytes = from.takeOutput()
        let at = min(cut, bytes.count)
        try to.receive(Array(bytes[..<at]))
        try to.receive(Array(bytes[at...]))
    }

    private func pairHeaders(_ type: String, port: Int = 80, request: Int = 0) -> HeaderBlock {
        ["streamtype": type, "port": "\(port)", "requestid": "\(request)"]
    }

    @Test("kubectl's exchange, from the client's side: a pair opened, replied, data both ways, ended in the kubelet's order")
    func pairExchange() throws {
        let error = try client.openStream(headers: pairHeaders("error"))
        try client.finish(stream: error)
        let data = try client.openStream(headers: pairHeaders("data"))
        #expect(error == 1 && data == 3, "a client's streams are odd and grow")
        try client.sendData(stream: data, Array("ping".utf8), fin: false)
        try pass(client, to: server)
        #expect(serverEvents.events == [
            .synStream(1, pairHeaders("error"), fin: false), .peerEnded(1),
            .synStream(3, pairHeaders("data"), fin: false), .data(3, "ping"),
        ])
        try server.sendData(stream: 3, Array("pong".utf8), fin: false)
        try server.finish(stream: 1)
        try server.finish(stream: 3)
        try pass(server, to: client)
        #expect(clientEvents.events == [
            .synReply(1, [:], fin: false), .synReply(3, [:], fin: false), .data(3, "pong"), .peerEnded(1), .peerEnded(3),
        ])
        #expect(client.openStreams == 1, "the data stream waits for the client's FIN")
        try client.finish(stream: 3)
        try pass(client, to: server)
        #expect(client.openStreams == 0 && server.openStreams == 0)
        #expect(serverEvents.events.last == .peerEnded(3))
    }

    @Test("The server's bytes read by the client in every two-way split")
    func everySplit() throws {
        _ = try client.openStream(headers: pairHeaders("error"))
        _ = try client.openStream(headers: pairHeaders("data"))
        try pass(client, to: server)
        try server.sendData(stream: 3, Array("0123456789".utf8), fin: true)
        try server.sendData(stream: 1, Array("refused".utf8), fin: true)
        let bytes = server.takeOutput()
        let expected: [RecordedEvent] = [
            .synReply(1, [:], fin: false), .synReply(3, [:], fin: false), .data(3, "0123456789"), .peerEnded(3),
            .data(1, "refused"), .peerEnded(1),
        ]
        for cut in 0...bytes.count {
            let fresh = try ClientSessionTests()
            _ = try fresh.client.openStream(headers: pairHeaders("error"))
            _ = try fresh.client.openStream(headers: pairHeaders("data"))
            _ = fresh.client.takeOutput()
            try fresh.client.receive(Array(bytes[..<cut]))
            try fresh.client.receive(Array(bytes[cut...]))
            #expect(fresh.clientEvents.events == expected, "cut at \(cut)")
        }
    }

    @Test("PING: the client's ids are odd and come back as replies; the server's even ones are echoed")
    func pings() throws {
        #expect(client.ping() == 1)
        #expect(client.ping() == 3)
        try pass(client, to: server)
        #expect(serverEvents.events == [.ping(1, isReply: false), .ping(3, isReply: false)])
        try pass(server, to: client)
        #expect(clientEvents.events == [.ping(1, isReply: true), .ping(3, isReply: true)])
        #expect(server.ping() == 2)
        try pass(server, to: client)
        #expect(clientEvents.events.last == .ping(2, isReply: false))
        try pass(client, to: server)
        #expect(serverEvents.events.last == .ping(2, isReply: true))
    }

    @Test("Streams the server opens are refused (portforward.k8s.io pushes none); an odd id from it ends the session")
    func serverStreams() throws {
        let peer = TestClient()
        try client.receive(peer.synStream(2, ["streamtype": "data"]))
        #expect(try peer.read(client.takeOutput()) == [.rst(2, .refusedStream)])
        #expect(clientEvents.events.isEmpty)
        #expect(throws: SPDYError.invalidStreamID(5, "a server's streams are even")) {
            try client.receive(peer.synStream(5, ["streamtype": "data"]))
        }
        #expect(try peer.read(client.takeOutput()) == [.goAway(2, .protocolError)])
    }

    @Test("SYN_REPLY twice is STREAM_IN_USE; for a stream never opened, INVALID_STREAM; for one reset here, dropped")
    func synReplies() throws {
        let session = try SPDYSession(role: .client, delegate: clientEvents)
        let replied = try session.openStream(headers: pairHeaders("error"))
        let reset = try session.openStream(headers: pairHeaders("data"))
        session.reset(stream: reset)
        _ = session.takeOutput()
        // The server's side of the header compression, as fresh as the session's.
        let compressor = try HeaderCompressor()
        var bytes: [UInt8] = []
        for stream in [replied, replied, reset, 7] {
            var block: [UInt8] = []
            try compressor.compress([:], appendingTo: &block)
            FrameEncoder.synReply(stream: stream, fin: false, compressedBlock: block, to: &bytes)
        }
        try session.receive(bytes)
        #expect(clientEvents.events == [.synReply(replied, [:], fin: false), .reset(replied, .streamInUse, byPeer: false)])
        #expect(try TestClient().read(session.takeOutput()) == [.rst(replied, .streamInUse), .rst(7, .invalidStream)])
        #expect(session.openStreams == 0)
    }

    @Test("No stream opens once either side said GOAWAY")
    func goAway() throws {
        server.goAway()
        try pass(server, to: client)
        #expect(clientEvents.events == [.goAway(0, .ok)])
        #expect(throws: SPDYError.streamNotWritable(1)) { try client.openStream(headers: pairHeaders("error")) }
        let other = try SPDYSession(role: .client)
        other.goAway()
        #expect(throws: SPDYError.streamNotWritable(1)) { try other.openStream(headers: pairHeaders("error")) }
    }

    @Test("A server's session still resets a SYN_REPLY: it opens no stream")
    func serverResetsSynReply() throws {
        var bytes: [UInt8] = []
        var block: [UInt8] = []
        try HeaderCompressor().compress([:], appendingTo: &block)
        FrameEncoder.synReply(stream: 1, fin: false, compressedBlock: block, to: &bytes)
        try server.receive(bytes)
        #expect(try TestClient().read(server.takeOutput()) == [.rst(1, .invalidStream)])
    }
}
