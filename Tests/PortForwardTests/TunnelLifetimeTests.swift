import Foundation
import Testing
@testable import HTTP2
@testable import PortForward
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// Every way a stream ends must leave nothing behind on the relay: no Tunnel, no HTTP2Stream
// (they hold each other: Tunnel.transport <-> HTTP2Stream.tunnel), no pooled buffer, no pipe.
// A relay and a client run in this process on one reactor, over loopback TCP; the pods are
// loopback listeners served by a thread (the native connector with no namespace connects to
// 127.0.0.1:PORT in ours).

/// The pods: `echo` writes back what it reads and ends its side after the client's end;
/// `reset` reads once and closes with RST.
private final class Pods: @unchecked Sendable {
    let echo: FileDescriptor
    let reset: FileDescriptor
    var echoPort: Int { Sockets.localAddress(echo).port }
    var resetPort: Int { Sockets.localAddress(reset).port }
    private let lock = NSLock()
    private var stopped = false

    init() throws {
        echo = try Sockets.listen(SocketAddress(ip: "127.0.0.1", port: 0)!)
        reset = try Sockets.listen(SocketAddress(ip: "127.0.0.1", port: 0)!)
        Sockets.setBlocking(echo, true)
        Sockets.setBlocking(reset, true)
        serve(echo) { fd in
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if count <= 0 { break }
                var offset = 0
                while offset < count {
                    let written = buffer.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, count - offset) }
                    if written <= 0 { Glibc.close(fd); return }
                    offset += written
                }
            }
            shutdown(fd, Int32(SHUT_WR))
            Glibc.close(fd)
        }
        serve(reset) { fd in
            var buffer = [UInt8](repeating: 0, count: 1024)
            _ = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            Sockets.resetOnClose(fd)
            Glibc.close(fd)
        }
    }

    private func serve(_ listener: FileDescriptor, _ handle: @escaping @Sendable (FileDescriptor) -> Void) {
        Thread { [self] in
            while true {
                let fd = accept(listener, nil, nil)
                lock.lock()
                let done = stopped
                lock.unlock()
                if fd < 0 || done {
                    if fd >= 0 { Glibc.close(fd) }
                    return
                }
                Sockets.setBlocking(fd, true)
                Thread { handle(fd) }.start()
            }
        }.start()
    }

    func stop() {
        lock.lock()
        stopped = true
        lock.unlock()
        shutdown(echo, Int32(SHUT_RDWR))
        shutdown(reset, Int32(SHUT_RDWR))
        Glibc.close(echo)
        Glibc.close(reset)
    }
}

/// A request body: `total` bytes of a pattern (Int.max: without end), then END_STREAM if `ends`.
private final class Body: DataSource {
    nonisolated(unsafe) static let pattern: UnsafeMutableRawPointer = {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 65536, alignment: 16)
        for index in 0..<65536 { memory.storeBytes(of: UInt8(truncatingIfNeeded: index &* 7), toByteOffset: index, as: UInt8.self) }
        return memory
    }()
    let total: Int
    let ends: Bool
    var offered = 0

    init(total: Int, ends: Bool) {
        self.total = total
        self.ends = ends
    }

    override func pendingBytes(limit: Int) -> (count: Int, endsBody: Bool) {
        let remaining = total - offered
        if remaining == 0 { return (0, ends) }
        return (min(limit, remaining, 65536 - offered % 65536), false)
    }

    override func takePayload(count: Int) -> Payload {
        if count == 0 { return .memory(UnsafeRawPointer(bitPattern: 1)!) }
        defer { offered += count }
        return .memory(UnsafeRawPointer(Body.pattern + offered % 65536))
    }
}

private final class Client: SessionDelegate {
    var received: [StreamID: Int] = [:]
    var closed: [StreamID: UInt32] = [:]
    var statuses: [StreamID: String] = [:]

    func session(_ session: Session, headers: HeaderList, stream: StreamID, endStream: Bool) {
        statuses[stream] = headers[":status"]
    }

    func session(_ session: Session, data: UnsafeRawBufferPointer, stream: StreamID) {
        received[stream, default: 0] += data.count
        session.consume(stream, data.count)
    }

    func session(_ session: Session, endOfStream stream: StreamID) {}

    func session(_ session: Session, closed stream: StreamID, errorCode: UInt32) { closed[stream] = errorCode }
}

/// Runs `step` every millisecond until it says stop.
private final class Every: CompletionHandler {
    let reactor: ReactorBackend
    let step: () -> Bool
    init(_ reactor: ReactorBackend, _ step: @escaping () -> Bool) {
        self.reactor = reactor
        self.step = step
    }
    func complete(_ completion: Completion) {
        if step() { return reactor.stop() }
        _ = reactor.timer(nanoseconds: 1_000_000, handler: self, tag: 0)
    }
}

private final class Deadline: CompletionHandler {
    let reactor: ReactorBackend
    var fired = false
    init(_ reactor: ReactorBackend) { self.reactor = reactor }
    func complete(_ completion: Completion) {
        fired = true
        reactor.stop()
    }
}

/// The native connector, noting every tunnel (and its transport) the relay holds when it
/// connects one: by then each stream's tunnel is in its session's table.
private final class Recording: Connector {
    let inner: Connector
    weak var relay: Relay?
    var tunnels: [ObjectIdentifier: Weak] = [:]
    var transports: [ObjectIdentifier: Weak] = [:]
    var sessions: [ObjectIdentifier: Weak] = [:]
    var connections: [ObjectIdentifier: Weak] = [:]
    var name: String { inner.name }

    struct Weak { weak var object: AnyObject? }

    init(_ inner: Connector) { self.inner = inner }

    func connect(pod: Pod, port: Int, done: @escaping (ConnectResult) -> Void) -> ConnectAttempt {
        note()
        return inner.connect(pod: pod, port: port, done: done)
    }

    func note() {
        guard let relay else { return }
        for session in relay.sessions.values {
            sessions[ObjectIdentifier(session)] = Weak(object: session)
            connections[ObjectIdentifier(session.connection)] = Weak(object: session.connection)
            for tunnel in session.table.tunnels {
                tunnels[ObjectIdentifier(tunnel)] = Weak(object: tunnel)
                if let transport = tunnel.transport { transports[ObjectIdentifier(transport)] = Weak(object: transport) }
            }
        }
    }

    var alive: (tunnels: Int, transports: Int, sessions: Int, connections: Int) {
        (tunnels.values.filter { $0.object != nil }.count, transports.values.filter { $0.object != nil }.count,
         sessions.values.filter { $0.object != nil }.count, connections.values.filter { $0.object != nil }.count)
    }
}

enum Ending: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// The client sends its body and ends it; the pod echoes it and ends its side.
    case clean
    /// The client resets each stream while bytes flow both ways.
    case clientReset
    /// The pod reads once and closes with RST.
    case podReset
    /// The client's connection drops (RST) while bytes flow both ways.
    case connectionLost
    var testDescription: String { rawValue }
}

struct LifetimeCase: Sendable, CustomTestStringConvertible {
    let backend: IOBackendChoice
    let splice: Bool
    let ending: Ending
    var testDescription: String { "\(backend.rawValue) \(splice ? "splice" : "buffers") \(ending.rawValue)" }

    static var all: [LifetimeCase] {
        var cases: [LifetimeCase] = []
        for backend in [IOBackendChoice.epoll, .uring] {
            for splice in [true, false] {
                for ending in Ending.allCases { cases.append(LifetimeCase(backend: backend, splice: splice, ending: ending)) }
            }
        }
        return cases
    }
}

@Suite("Tunnel lifetime: every ending frees the tunnel, its transport, its buffers and pipes", .serialized)
struct TunnelLifetimeTests {
    @Test("No tunnel, transport, buffer or pipe left", arguments: LifetimeCase.all)
    func nothingLeft(_ test: LifetimeCase) throws {
        Reactor.Process.ignoreBrokenPipes()
        guard let reactor = try? Reactors.make(test.backend) else {
            print("skip: no \(test.backend) backend here")
            return
        }
        let pods = try Pods()
        defer { pods.stop() }
        let registry = PodRegistry([Pod(namespace: "default", name: "web")])
        let connector = Recording(try NativeConnector(reactor: reactor))
        let pipes: PipePool? = test.splice ? PipePool() : nil
        // No keepalive or idle tick: a cancelled timer keeps its handler (the connection) in the
        // heap until its deadline, which would hide what this test looks for behind seconds.
        var limits = RelayLimits()
        limits.keepalive.interval = 0
        limits.idleTimeout = 0
        var relay: Relay? = try Relay(listen: SocketAddress(ip: "127.0.0.1", port: 0)!, node: "node", registry: registry,
                                      connector: connector, reactor: reactor, limits: limits)
        relay!.pipes = pipes
        connector.relay = relay
        relay!.start()
        let buffersBefore = reactor.buffers.inUse
        let pipesBefore = pipes?.inUse ?? 0

        // The client.
        let fd = try Sockets.socket(for: relay!.address)
        let started = relay!.address.withSockaddr { Glibc.connect(fd, $0, $1) }
        #expect(started == 0 || errno == EINPROGRESS)
        var probe = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        #expect(poll(&probe, 1, 5000) == 1)
        let client = Client()
        let session = try Session(role: .client)
        session.delegate = client
        let connection = Connection(fd: fd, session: session, reactor: reactor)
        connection.start()
        let streams = 8
        let size = 512 * 1024
        let port = test.ending == .podReset ? pods.resetPort : pods.echoPort
        var opened: [StreamID] = []
        var bodies: [Body] = []
        for _ in 0..<streams {
            let body = test.ending == .clean ? Body(total: size, ends: true) : Body(total: Int.max, ends: false)
            bodies.append(body)
            opened.append(try session.submitRequest([(":method", "POST"), (":scheme", "http"), (":authority", "relay"),
                                                     (":path", "/portForward/default/web"), ("port", "\(port)")], body: body))
        }
        connection.flushSoon()

        // Phase 1: the streams end as the case says.
        let deadline = Deadline(reactor)
        var timer = reactor.timer(nanoseconds: 20_000_000_000, handler: deadline, tag: 0)
        var resetDone = false
        // A finished tunnel's last payload may still wait in the output queue (held until sent).
        func heldNothing() -> Bool { relay?.sessions.values.allSatisfy { $0.connection.held.count == 0 } ?? true }
        _ = reactor.timer(nanoseconds: 1_000_000, handler: Every(reactor) {
            switch test.ending {
            case .clean, .podReset:
                // The relay's side too: the client's last frames may still be on their way.
                return client.closed.count == streams && relay?.streams == 0 && heldNothing()
            case .clientReset:
                if !resetDone, opened.allSatisfy({ client.received[$0, default: 0] >= 64 * 1024 }) {
                    resetDone = true
                    for stream in opened { session.reset(stream) }
                    connection.flushSoon()
                }
                // The client's stream closes when its RST_STREAM is produced, before it is
                // written: wait for the relay to have read it.
                return client.closed.count == streams && relay?.streams == 0 && heldNothing()
            case .connectionLost:
                if opened.allSatisfy({ client.received[$0, default: 0] >= 64 * 1024 }) {
                    // Drop the connection with bytes in flight both ways.
                    Sockets.resetOnClose(fd)
                    connection.close(reason: "dropped by the test")
                    return true
                }
                return false
            }
        }, tag: 0)
        try reactor.run()
        reactor.cancelTimer(timer)
        #expect(!deadline.fired, "phase 1 did not end within 20 s: \(client.closed.count) of \(streams) closed, received \(client.received)")
        switch test.ending {
        case .clean:
            for stream in opened {
                #expect(client.closed[stream] == 0 && client.received[stream] == size,
                        "stream \(stream): closed \(String(describing: client.closed[stream])), \(client.received[stream, default: 0]) of \(size) echoed")
            }
        case .clientReset, .podReset:
            #expect(client.closed.count == streams)
        case .connectionLost:
            break
        }
        #expect(connector.tunnels.count == streams, "\(connector.tunnels.count) tunnels seen")
        if test.ending != .connectionLost {
            // Every stream has ended and the connection is still there: it came to hold nothing.
            for relaySession in relay!.sessions.values {
                #expect(relaySession.connection.held.count == 0, "held bytes: \(relaySession.connection.held.count)")
            }
        }

        // Phase 2: the client's connection ends (if it has not), and the relay lets go of it.
        if !connection.isClosed { connection.close(reason: nil) }
        timer = reactor.timer(nanoseconds: 10_000_000_000, handler: deadline, tag: 0)
        var settled = 0
        _ = reactor.timer(nanoseconds: 1_000_000, handler: Every(reactor) {
            guard let relay, relay.sessions.isEmpty, relay.streams == 0 else { return false }
            // Some more turns: quiet callbacks and cancelled completions.
            settled += 1
            return settled > 50
        }, tag: 0)
        try reactor.run()
        reactor.cancelTimer(timer)
        #expect(!deadline.fired, "the relay still holds \(relay?.sessions.count ?? -1) sessions, \(relay?.streams ?? -1) streams")

        relay!.stop()
        relay = nil
        bodies.removeAll()
        let alive = connector.alive
        #expect(alive.tunnels == 0, "\(alive.tunnels) of \(connector.tunnels.count) tunnels still alive")
        #expect(alive.transports == 0, "\(alive.transports) of \(connector.transports.count) HTTP2Streams still alive")
        #expect(alive.sessions == 0, "\(alive.sessions) RelaySessions still alive")
        #expect(alive.connections == 0, "\(alive.connections) relay Connections still alive")
        #expect(reactor.buffers.inUse == buffersBefore, "buffers in use: \(reactor.buffers.inUse), before: \(buffersBefore)")
        #expect((pipes?.inUse ?? 0) == pipesBefore, "pipes in use: \(pipes?.inUse ?? 0), before: \(pipesBefore)")
    }
}
