import CLinuxShim
import HTTP2
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// How a relay reaches a pod's port.
public enum ConnectResult {
    case connected(FileDescriptor)
    /// A gateway: the pod is reached through this tunnel (a stream of the node relay's
    /// connection, answered 200): the stream's tunnel joins it (`Tunnel.join`).
    case joined(Tunnel)
    /// Why not; `Refusal` gives the status and the text the stream is answered with.
    case failed(Refusal)
}

public protocol ConnectAttempt: AnyObject {
    /// The stream went away first: give up quietly (no result is delivered).
    func cancel()
}

public protocol Connector: AnyObject {
    var name: String { get }
    func connect(pod: Pod, port: Int, done: @escaping (ConnectResult) -> Void) -> ConnectAttempt
}

extension ConnectResult {
    /// The stream's tunnel takes what was connected: the pod's socket, or (a gateway) the node
    /// stream's tunnel. Too late (the tunnel finished meanwhile), the socket is closed, the node
    /// stream reset.
    func attach(_ tunnel: Tunnel) {
        switch self {
        case .connected(let fd): tunnel.attach(fd)
        case .joined(let other): tunnel.join(other)
        case .failed: break
        }
    }
}

public enum ConnectorChoice: String, CaseIterable, Sendable {
    case native, nsenter
}

/// Enters the pod's network namespace only to create the socket (setns around `socket()`), then
/// connects from the relay's own thread without blocking it: to 127.0.0.1:PORT, then [::1]:PORT.
/// Each pod's namespace stays open (`NamespaceDescriptors`): a stream costs a `stat` of its path,
/// not an open and a close.
public final class NativeConnector: Connector, CompletionHandler {
    public let name = "native"
    let reactor: ReactorBackend
    let timeout: UInt64
    private let home: FileDescriptor
    public let namespaces = NamespaceDescriptors()
    private var sweeping = false

    public init(reactor: ReactorBackend, timeoutSeconds: Double = 5) throws {
        self.reactor = reactor
        self.timeout = UInt64(timeoutSeconds * 1e9)
        home = try check("open", subject: "/proc/self/ns/net") { open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC) }
    }

    deinit { Glibc.close(home) }

    public func connect(pod: Pod, port: Int, done: @escaping (ConnectResult) -> Void) -> ConnectAttempt {
        let attempt = NativeAttempt(connector: self, pod: pod, port: port, done: done)
        attempt.start()
        return attempt
    }

    /// A socket created inside `path`'s network namespace (nil: ours).
    func socket(in path: String?, family: Int32) throws -> FileDescriptor {
        guard let path else { return try check("socket") { pf_socket_nonblock(family, Int32(SOCK_STREAM.rawValue)) } }
        // Checked on every stream, not only at start: a pod's namespace may come (or go, or be
        // replaced) after.
        let namespace = try namespaces.descriptor(path)
        if !sweeping {
            sweeping = true
            _ = reactor.timer(nanoseconds: UInt64(NamespaceDescriptors.sweepInterval * 1e9), handler: self, tag: 0)
        }
        _ = try check("cannot enter network namespace", subject: path) { pf_setns(namespace, pf_clone_newnet) }
        defer {
            if pf_setns(home, pf_clone_newnet) != 0 {
                fatalError("cannot return to the relay's network namespace: \(SystemError("setns"))")
            }
        }
        return try check("socket") { pf_socket_nonblock(family, Int32(SOCK_STREAM.rawValue)) }
    }

    /// The sweep timer: namespaces that went away are let go of; the timer runs while any is held.
    public func complete(_ completion: Completion) {
        namespaces.sweep()
        sweeping = namespaces.count > 0
        if sweeping {
            _ = reactor.timer(nanoseconds: UInt64(NamespaceDescriptors.sweepInterval * 1e9), handler: self, tag: 0)
        }
    }
}

/// What both connectors' attempts share: the caller's callback, delivered once, and the
/// connect deadline.
class Attempt: ConnectAttempt {
    let reactor: ReactorBackend
    let port: Int
    let timeout: UInt64
    var done: ((ConnectResult) -> Void)?
    var timer: TimerID = 0

    init(reactor: ReactorBackend, port: Int, timeout: UInt64, done: @escaping (ConnectResult) -> Void) {
        self.reactor = reactor
        self.port = port
        self.timeout = timeout
        self.done = done
    }

    var timeoutResult: ConnectResult {
        .failed(.connectTimedOut(port: port, seconds: Double(timeout) / 1e9))
    }

    func finish(_ result: ConnectResult) {
        reactor.cancelTimer(timer)
        let callback = done
        done = nil
        callback?(result)
    }

    func cancel() {
        guard done != nil else { return }
        done = nil
        reactor.cancelTimer(timer)
        releaseResources()
    }

    /// What a cancelled attempt must give up (its socket, its child process).
    func releaseResources() {}
}

final class NativeAttempt: Attempt, CompletionHandler {
    let connector: NativeConnector
    let pod: Pod
    var addresses: [SocketAddress]
    var fd: FileDescriptor = -1
    var firstError: String?

    init(connector: NativeConnector, pod: Pod, port: Int, done: @escaping (ConnectResult) -> Void) {
        self.connector = connector
        self.pod = pod
        addresses = [SocketAddress(ip: "127.0.0.1", port: port)!, SocketAddress(ip: "::1", port: port)!]
        super.init(reactor: connector.reactor, port: port, timeout: connector.timeout, done: done)
    }

    func start() {
        timer = connector.reactor.timer(nanoseconds: connector.timeout, handler: self, tag: 2)
        next()
    }

    private func next() {
        while !addresses.isEmpty {
            let address = addresses.removeFirst()
            do {
                fd = try connector.socket(in: pod.networkNamespacePath, family: address.family)
            } catch let error as SystemError where error.call == "socket" {
                if firstError == nil { firstError = "\(error)" }
                continue
            } catch let problem as NamespaceProblem {
                return finish(.failed(.namespaceUnavailable(problem)))
            } catch {
                return finish(.failed(.connectFailed("\(error)")))
            }
            connector.reactor.connect(fd, address: address, handler: self, tag: 1)
            return
        }
        finish(.failed(.connectFailed(firstError ?? "cannot connect")))
    }

    func complete(_ completion: Completion) {
        guard done != nil else { return }
        if completion.tag == 2 {
            releaseResources()
            return finish(timeoutResult)
        }
        if completion.result == 0 {
            let connected = fd
            fd = -1
            return finish(.connected(connected))
        }
        connector.reactor.close(fd)
        fd = -1
        if firstError == nil { firstError = SystemError.reason(-completion.result) }
        next()
    }

    override func releaseResources() {
        if fd >= 0 { connector.reactor.close(fd); fd = -1 }
    }
}

/// The reference design: per stream, `nsenter --net=PATH socat STDIO TCP:localhost:PORT`. socat's
/// standard input and output are one end of a socket pair, the tunnel holds the other; socat's
/// diagnostics tell whether it connected, and its error line becomes the answer's text.
public final class NsenterConnector: Connector {
    public let name = "nsenter"
    let reactor: ReactorBackend
    let timeout: UInt64

    public init(reactor: ReactorBackend, timeoutSeconds: Double = 5) {
        self.reactor = reactor
        self.timeout = UInt64(timeoutSeconds * 1e9)
    }

    public func connect(pod: Pod, port: Int, done: @escaping (ConnectResult) -> Void) -> ConnectAttempt {
        let attempt = NsenterAttempt(connector: self, port: port, done: done)
        // nsenter would open the path itself, and a FIFO there would hold it (and the stream)
        // until the connect timeout: the same check as the native connector's, answered at once.
        if let path = pod.networkNamespacePath, let problem = NetworkNamespace.check(path) {
            attempt.finish(.failed(.namespaceUnavailable(problem)))
            return attempt
        }
        var command: [String] = []
        if let netns = pod.netns {
            command = ["nsenter", "--net=\(netns)"]
        } else if let pid = pod.pid {
            command = ["nsenter", "-t", "\(pid)", "-n"]
        }
        // -d -d: socat says "starting data transfer loop" once connected. -t: after one side's
        // end of file, wait for the other side as long as it takes (half-closed connections).
        // shut-down: when the pod ends its side, socat shuts the socket pair down for writing (its
        // stdin, the same socket, would otherwise keep it open and no end of file would arrive).
        command += ["socat", "-d", "-d", "-t", "86400", "STDIO,shut-down", "TCP:localhost:\(port)"]
        attempt.start(command)
        return attempt
    }
}

final class NsenterAttempt: Attempt, CompletionHandler {
    let connector: NsenterConnector
    var pid: pid_t = 0
    var socket: FileDescriptor = -1
    var diagnostics: FileDescriptor = -1
    var text: [UInt8] = []
    let chunk = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 1)
    /// How long until the next try at reaping socat (`reap`).
    private var reapDelay: UInt64 = 1_000_000

    private static let diagnosticsTag: UInt32 = 1
    private static let timeoutTag: UInt32 = 2
    private static let reapTag: UInt32 = 3

    init(connector: NsenterConnector, port: Int, done: @escaping (ConnectResult) -> Void) {
        self.connector = connector
        super.init(reactor: connector.reactor, port: port, timeout: connector.timeout, done: done)
    }

    deinit { chunk.deallocate() }

    func start(_ command: [String]) {
        var pair: [Int32] = [-1, -1]
        var errors: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            return finish(.failed(.connectFailed("\(SystemError("socketpair"))")))
        }
        guard pf_pipe2(&errors) == 0 else {
            let error = SystemError("pipe2")
            Glibc.close(pair[0])
            Glibc.close(pair[1])
            return finish(.failed(.connectFailed("\(error)")))
        }
        let spawned = Result { try ChildProcess.spawn(command, stdin: pair[1], stdout: pair[1], stderr: errors[1]) }
        Glibc.close(pair[1])
        Glibc.close(errors[1])
        socket = pair[0]
        diagnostics = errors[0]
        switch spawned {
        case .success(let child):
            pid = child
        case .failure(let error):
            Glibc.close(socket)
            Glibc.close(diagnostics)
            socket = -1
            diagnostics = -1
            return finish(.failed(.connectFailed("\(error)")))
        }
        Sockets.setBlocking(socket, false)
        timer = connector.reactor.timer(nanoseconds: connector.timeout, handler: self, tag: Self.timeoutTag)
        readDiagnostics()
    }

    private func readDiagnostics() {
        connector.reactor.read(diagnostics, into: chunk, count: 4096, handler: self, tag: Self.diagnosticsTag)
    }

    func complete(_ completion: Completion) {
        switch completion.tag {
        case Self.timeoutTag:
            guard done != nil else { return }
            // Killed, socat closes its diagnostics: their end of file reaps it, as below.
            releaseResources()
            return finish(timeoutResult)
        case Self.reapTag:
            return reap()
        default:
            break
        }
        if completion.result > 0 {
            if done != nil {
                text.append(contentsOf: UnsafeRawBufferPointer(start: chunk, count: Int(completion.result)))
                if String(decoding: text, as: UTF8.self).contains("starting data transfer loop") {
                    let connected = socket
                    socket = -1
                    text = []
                    finish(.connected(connected))
                }
            }
            // Keep draining socat's diagnostics so that it never blocks on them.
            readDiagnostics()
            return
        }
        // socat exited (or is exiting).
        connector.reactor.close(diagnostics)
        diagnostics = -1
        if done != nil {
            if socket >= 0 { Glibc.close(socket); socket = -1 }
            finish(.failed(.connectFailed(reason())))
        }
        reap()
    }

    /// Collects socat's exit without blocking the loop. The end of file on its diagnostics comes
    /// when the exiting process closes its descriptors, a moment before it becomes waitable, so a
    /// non-blocking waitpid nearly always reaps it at once; otherwise it is tried again on a timer
    /// (1 ms, doubling up to a quarter of a second). Chosen over a pidfd watched for readability:
    /// that would cost one more descriptor per connect attempt, when the relay may be short of
    /// them, to save a retry that almost never happens.
    private func reap() {
        guard pid > 0 else { return }
        var status: Int32 = 0
        var reaped: pid_t
        repeat { reaped = waitpid(pid, &status, WNOHANG) } while reaped < 0 && pf_errno() == EINTR
        if reaped == 0 {
            _ = connector.reactor.timer(nanoseconds: reapDelay, handler: self, tag: Self.reapTag)
            reapDelay = min(reapDelay * 2, 256_000_000)
            return
        }
        // Reaped, or not ours to reap any more (ECHILD): either way, no pid to signal later.
        pid = 0
    }

    /// socat's error line without its time stamp: "E connect(5, AF=2 127.0.0.1:80, 16): Connection refused".
    private func reason() -> String {
        let lines = String(decoding: text, as: UTF8.self).split(separator: "\n")
        if let error = lines.last(where: { $0.contains(" E ") }), let range = error.range(of: " E ") {
            return String(error[range.upperBound...])
        }
        if let last = lines.last { return String(last) }
        return "socat exited before connecting"
    }

    /// The stream went away or the connect timed out: the socket pair end goes, and socat is
    /// killed; its diagnostics are still drained, and their end of file reaps it.
    override func releaseResources() {
        if socket >= 0 { Glibc.close(socket); socket = -1 }
        if pid > 0 { kill(pid, SIGKILL) }
    }
}
