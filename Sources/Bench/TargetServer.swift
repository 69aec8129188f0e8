import CLinuxShim
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// What a target server does with a connection.
public enum TargetMode: String, CaseIterable, Sendable {
    /// Sends back what it receives; on end of file it closes.
    case echo
    /// Reads and drops everything.
    case discard
    /// Writes bytes as fast as the peer takes them, until the peer goes away.
    case source
    /// All three, on PORT (echo), PORT+1 (discard) and PORT+2 (source); port 0: three free ports.
    case all
}

/// The far end of the bench: a small TCP server on its own reactor (`portforward bench --serve`).
/// It runs inside the pod's network namespace when the bench spawns the pod.
public final class TargetServer: CompletionHandler {
    public let reactor: ReactorBackend
    /// The listeners and what each serves.
    public private(set) var listeners: [(fd: FileDescriptor, mode: TargetMode, address: SocketAddress)] = []
    private var connections: [FileDescriptor: TargetConnection] = [:]
    public private(set) var accepted = 0

    public init(reactor: ReactorBackend, mode: TargetMode, host: String = "127.0.0.1", port: Int) throws {
        self.reactor = reactor
        let modes: [TargetMode] = mode == .all ? [.echo, .discard, .source] : [mode]
        for (index, each) in modes.enumerated() {
            let wanted = port == 0 ? 0 : port + index
            guard let address = SocketAddress(ip: host, port: wanted) else {
                throw BenchError("invalid listen address \"\(host)\"")
            }
            let fd = try Sockets.listen(address, backlog: 65535)
            listeners.append((fd, each, Sockets.localAddress(fd)))
        }
    }

    public func start() {
        for (index, listener) in listeners.enumerated() {
            reactor.accept(listener.fd, handler: self, tag: UInt32(index))
        }
    }

    /// `echo=127.0.0.1:7100 discard=127.0.0.1:7101 source=127.0.0.1:7102`: the ready line's tail.
    public var summary: String {
        listeners.map { "\($0.mode.rawValue)=\($0.address)" }.joined(separator: " ")
    }

    public func complete(_ completion: Completion) {
        guard completion.result >= 0 else {
            // Out of descriptors or memory: the connection waits in the backlog until one frees.
            return
        }
        accepted += 1
        let fd = completion.result
        Sockets.noDelay(fd)
        let connection = TargetConnection(fd: fd, mode: listeners[Int(completion.tag)].mode, server: self)
        connections[fd] = connection
        connection.start()
    }

    func closed(_ connection: TargetConnection) {
        if connections[connection.fd] === connection { connections[connection.fd] = nil }
        reactor.close(connection.fd)
    }

    public var openConnections: Int { connections.count }
}

final class TargetConnection: CompletionHandler {
    let fd: FileDescriptor
    let mode: TargetMode
    unowned let server: TargetServer
    private var reactor: ReactorBackend { server.reactor }
    /// Echo: the pooled buffer being written back, and how much of it is out.
    private var buffer = BufferPool.none
    private var count = 0
    private var written = 0
    private var done = false

    private enum Tag: UInt32 { case receive = 1, write }

    init(fd: FileDescriptor, mode: TargetMode, server: TargetServer) {
        self.fd = fd
        self.mode = mode
        self.server = server
    }

    func start() {
        switch mode {
        case .source: writeSource()
        default: reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
        }
    }

    private func writeSource() {
        reactor.write(fd, from: Pattern.bytes, count: Pattern.size / 2, handler: self, tag: Tag.write.rawValue)
    }

    func complete(_ completion: Completion) {
        if done {
            if completion.buffer != BufferPool.none { reactor.buffers.release(completion.buffer) }
            return
        }
        switch Tag(rawValue: completion.tag) {
        case .receive:
            guard completion.result > 0 else { return finish() }
            if mode == .echo {
                buffer = completion.buffer
                count = Int(completion.result)
                written = 0
                writeEcho()
            } else {
                reactor.buffers.release(completion.buffer)
                reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
            }
        case .write:
            guard completion.result >= 0 else { return finish() }
            if mode == .source { return writeSource() }
            written += Int(completion.result)
            if written < count { return writeEcho() }
            reactor.buffers.release(buffer)
            buffer = BufferPool.none
            reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
        case nil:
            break
        }
    }

    private func writeEcho() {
        reactor.write(fd, from: reactor.buffers.pointer(buffer) + written, count: count - written,
                      handler: self, tag: Tag.write.rawValue)
    }

    private func finish() {
        if done { return }
        done = true
        if buffer != BufferPool.none {
            reactor.buffers.release(buffer)
            buffer = BufferPool.none
        }
        server.closed(self)
    }
}

/// Ends a reactor when a descriptor reads end of file or fails: a spawned server watches its
/// standard input, a pipe from the bench, so it goes away with the bench however the bench ends.
final class EndOfFileStop: CompletionHandler {
    let reactor: ReactorBackend
    let fd: FileDescriptor
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: 256, alignment: 8)
    var onEnd: () -> Void

    init(reactor: ReactorBackend, fd: FileDescriptor, onEnd: @escaping () -> Void) {
        self.reactor = reactor
        self.fd = fd
        self.onEnd = onEnd
    }

    deinit { buffer.deallocate() }

    func arm() { reactor.read(fd, into: buffer, count: 256, handler: self, tag: 0) }

    func complete(_ completion: Completion) {
        if completion.result > 0 { return arm() }
        onEnd()
    }
}

/// What ends a bench run or a target server early.
let benchStopSignals = [SIGINT, SIGTERM, SIGHUP]

/// `portforward bench --serve MODE`: runs a target server until SIGINT/SIGTERM (or, with
/// `watchStandardInput`, until its standard input ends). Prints one ready line on stdout:
/// `bench target ready: echo=127.0.0.1:7100 ...`.
public func serveTarget(mode: TargetMode, host: String, port: Int, backend: IOBackendChoice,
                        watchStandardInput: Bool) throws {
    Process.ignoreBrokenPipes()
    Process.raiseOpenFileLimit()
    let reactor = try Reactors.make(backend)
    let server = try TargetServer(reactor: reactor, mode: mode, host: host, port: port)
    server.start()
    let signals = try SignalWatcher(benchStopSignals, reactor: reactor) { _ in reactor.stop() }
    print("bench target ready: \(server.summary) io=\(reactor.name)")
    fflush(stdout)
    var watcher: EndOfFileStop?
    if watchStandardInput {
        // The epoll backend tries a read at once: it must not block.
        Sockets.setBlocking(0, false)
        watcher = EndOfFileStop(reactor: reactor, fd: 0) { reactor.stop() }
        watcher?.arm()
    }
    try reactor.run()
    withExtendedLifetime((server, signals, watcher)) {}
}
