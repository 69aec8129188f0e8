import Testing
@testable import HTTP2
@testable import PortForward
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// A connector may answer before `connect` returns (a namespace that cannot be entered, a spawn
// that fails): the relay session must then keep no entry for the attempt. A relay and a client
// run in this process on one reactor, over loopback TCP.

/// Answers every connect before returning, with what `result` gives.
private final class AnswersAtOnce: Connector {
    let name = "answers at once"
    let result: () -> ConnectResult

    init(_ result: @escaping () -> ConnectResult) { self.result = result }

    func connect(pod: Pod, port: Int, done: @escaping (ConnectResult) -> Void) -> ConnectAttempt {
        done(result())
        return Answered()
    }

    private final class Answered: ConnectAttempt {
        func cancel() {}
    }
}

/// A request body that never comes: the client keeps its side of the stream open, so that the
/// relay's answer leaves the stream open too, with whatever the session keeps for it.
private final class Silent: DataSource {
    override func pendingBytes(limit: Int) -> (count: Int, endsBody: Bool) { (0, false) }
}

/// The client's side of the connection: what each stream was answered. Stops the reactor once
/// every stream is answered (the relay ended its side).
private final class Client: SessionDelegate {
    let reactor: ReactorBackend
    let streams: Int
    var statuses: [StreamID: String] = [:]
    var bodies: [StreamID: [UInt8]] = [:]
    var ended: Set<StreamID> = []
    var closed: Set<StreamID> = []

    init(reactor: ReactorBackend, streams: Int) {
        self.reactor = reactor
        self.streams = streams
    }

    func session(_ session: Session, headers: HeaderList, stream: StreamID, endStream: Bool) {
        statuses[stream] = headers[":status"]
        if endStream { self.session(session, endOfStream: stream) }
    }

    func session(_ session: Session, data: UnsafeRawBufferPointer, stream: StreamID) {
        bodies[stream, default: []].append(contentsOf: data)
        session.consume(stream, data.count)
    }

    func session(_ session: Session, endOfStream stream: StreamID) {
        ended.insert(stream)
        if ended.count == streams { reactor.stop() }
    }

    func session(_ session: Session, closed stream: StreamID, errorCode: UInt32) { closed.insert(stream) }
}

/// Stops the reactor once `done` says so, looking every millisecond.
private final class Until: CompletionHandler {
    let reactor: ReactorBackend
    let done: () -> Bool
    init(_ reactor: ReactorBackend, _ done: @escaping () -> Bool) {
        self.reactor = reactor
        self.done = done
    }
    func complete(_ completion: Completion) {
        if done() { return reactor.stop() }
        _ = reactor.timer(nanoseconds: 1_000_000, handler: self, tag: 0)
    }
}

/// Stops the reactor should the streams never all close.
private final class Deadline: CompletionHandler {
    let reactor: ReactorBackend
    var fired = false
    init(_ reactor: ReactorBackend) { self.reactor = reactor }
    func complete(_ completion: Completion) {
        fired = true
        reactor.stop()
    }
}

/// How the connector answers at once, and what the client must see.
enum AtOnce: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case failed, connected, nativeMissingNamespace, nsenterMissingNamespace
    var testDescription: String { rawValue }
}

@Suite("RelaySession: a connector that answers at once leaves no attempt behind", .serialized)
struct RelaySessionAttemptTests {
    static let missing = "/nonexistent-pf-test/netns"

    private func connector(_ kind: AtOnce, reactor: ReactorBackend) throws -> Connector {
        switch kind {
        case .failed:
            return AnswersAtOnce { .failed(.connectFailed("refused at once")) }
        case .connected:
            return AnswersAtOnce {
                // A pod that ends its side at once: the stream closes when both sides have ended.
                var pair: [Int32] = [-1, -1]
                guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
                    return .failed(.connectFailed("socketpair"))
                }
                Sockets.setBlocking(pair[0], false)
                close(pair[1])
                return .connected(pair[0])
            }
        case .nativeMissingNamespace:
            return try NativeConnector(reactor: reactor)
        case .nsenterMissingNamespace:
            return NsenterConnector(reactor: reactor)
        }
    }

    @Test("Every stream answered, no attempt kept, the stream count back to 0", arguments: AtOnce.allCases)
    func noStaleAttempts(_ kind: AtOnce) throws {
        Reactor.Process.ignoreBrokenPipes()
        let reactor = try Reactors.make(.epoll)
        let registry = PodRegistry([Pod(namespace: "default", name: "web", netns: Self.missing)])
        let relay = try Relay(listen: SocketAddress(ip: "127.0.0.1", port: 0)!, node: "node", registry: registry,
                              connector: try connector(kind, reactor: reactor), reactor: reactor)
        relay.start()
        defer { relay.stop() }

        let fd = try Sockets.socket(for: relay.address)
        let started = relay.address.withSockaddr { Glibc.connect(fd, $0, $1) }
        #expect(started == 0 || errno == EINPROGRESS)
        var probe = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        #expect(poll(&probe, 1, 5000) == 1)
        let streams = 20
        let client = Client(reactor: reactor, streams: streams)
        let session = try Session(role: .client)
        session.delegate = client
        let connection = Connection(fd: fd, session: session, reactor: reactor)
        defer { if !connection.isClosed { connection.close(reason: nil) } }
        connection.start()
        var opened: [StreamID] = []
        for _ in 0..<streams {
            opened.append(try session.submitRequest([(":method", "POST"), (":scheme", "http"), (":authority", "relay"),
                                                     (":path", "/portForward/default/web"), ("port", "7000")], body: Silent()))
        }
        connection.flushSoon()
        let deadline = Deadline(reactor)
        var timer = reactor.timer(nanoseconds: 10_000_000_000, handler: deadline, tag: 0)
        try reactor.run()
        reactor.cancelTimer(timer)

        // Every stream answered, and still open: the relay must hold no attempt for any of them.
        #expect(!deadline.fired, "only \(client.ended.count) of \(streams) streams answered within 10 s")
        #expect(client.statuses.count == streams)
        for (stream, status) in client.statuses {
            let body = String(decoding: client.bodies[stream] ?? [], as: UTF8.self)
            switch kind {
            case .failed:
                #expect(status == "502" && body == "refused at once\n", "\(status) \(body)")
            case .connected:
                #expect(status == "200" && body.isEmpty, "\(status) \(body)")
            case .nativeMissingNamespace, .nsenterMissingNamespace:
                #expect(status == "502" && body == "\(Self.missing) does not exist\n", "\(status) \(body)")
            }
        }
        #expect(client.closed.isEmpty, "the client kept its side open: no stream may have closed yet")
        #expect(relay.sessions.count == 1)
        for relaySession in relay.sessions.values {
            #expect(relaySession.attempts.isEmpty, "\(relaySession.attempts.count) attempts kept for answered streams")
        }

        // Then the client resets them: nothing is left of any.
        for stream in opened { session.reset(stream) }
        connection.flushSoon()
        timer = reactor.timer(nanoseconds: 10_000_000_000, handler: deadline, tag: 0)
        _ = reactor.timer(nanoseconds: 1_000_000, handler: Until(reactor) { relay.streams == 0 }, tag: 0)
        try reactor.run()
        reactor.cancelTimer(timer)
        #expect(!deadline.fired, "\(relay.streams) of \(streams) streams still held by the relay after 10 s")
        for relaySession in relay.sessions.values {
            #expect(relaySession.attempts.isEmpty && relaySession.table.isEmpty,
                    "\(relaySession.attempts.count) attempts, \(relaySession.table.count) tunnels kept")
        }
        #expect(relay.streams == 0)
    }
}
