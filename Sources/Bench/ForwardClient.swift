import CLinuxShim
import PortForward
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// What the bench asks of the `portforward forward` it starts to reach a pod as a user would:
/// the client's own options (kubeconfig, server, credentials, TLS, protocol) as it takes them,
/// the pod, and the pod's ports by role.
public struct ForwardRequest: Sendable {
    /// `forward`'s options, as its command line takes them (no pod, no ports).
    public var arguments: [String]
    /// NAME or pod/NAME.
    public var pod: String
    public var echoPort: Int
    public var discardPort: Int
    public var sourcePort: Int
    /// The protocol asked for (`auto`, `h2`, `websocket`, `spdy`).
    public var wireProtocol: WireProtocol
    /// The server it goes to, as far as the bench can tell (for the report).
    public var server: String
    /// Its `--copy`.
    public var copy: String

    public init(arguments: [String], pod: String, echoPort: Int, discardPort: Int?, sourcePort: Int?,
                wireProtocol: WireProtocol, server: String, copy: String) {
        self.arguments = arguments
        self.pod = pod
        self.echoPort = echoPort
        self.discardPort = discardPort ?? echoPort
        self.sourcePort = sourcePort ?? echoPort
        self.wireProtocol = wireProtocol
        self.server = server
        self.copy = copy
    }

    /// The pod's ports, each once.
    var remotePorts: [Int] {
        var ports: [Int] = []
        for port in [echoPort, discardPort, sourcePort] where !ports.contains(port) { ports.append(port) }
        return ports
    }
}

/// The `portforward forward` child (this executable), listening on free local ports of
/// 127.0.0.1 for the pod's ports. Its standard output and error go to a file, so that its line
/// per connection never fills a pipe; the bench reads the file for its `Forwarding from` lines,
/// its `-v` session line, and its last lines when it fails. Stopped with SIGTERM, then SIGKILL.
final class ForwardClient {
    let request: ForwardRequest
    /// The process (no pipes: its output goes to `logPath`).
    private let child: Child
    private let logPath: String
    /// The local ports, by the pod's port's role.
    private(set) var ports = StreamPorts(echo: 0, discard: 0, source: 0)

    /// Starts the child with `--io` and `--copy` as given, and waits up to `timeout` seconds for
    /// it to listen on every port.
    init(_ request: ForwardRequest, io: IOBackendChoice, copy: String, timeout: Double) throws {
        self.request = request
        logPath = "/tmp/pf-bench-\(getpid())-forward.log"
        let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard log >= 0 else { throw SystemError("cannot create", subject: logPath) }
        defer { close(log) }
        let arguments = [executablePath(), "forward"] + request.arguments
            + ["--io", io.rawValue, "--copy", copy, "--address", "127.0.0.1", "-v", request.pod]
            + request.remotePorts.map { ":\($0)" }
        child = Child(pid: try ChildProcess.spawn(arguments, stdout: log, stderr: log), name: "portforward forward",
                      output: -1, input: -1)
        do {
            try waitForListeners(timeout: timeout)
        } catch {
            for line in lastLines(10) { standardError("forward: \(line)") }
            stop()
            throw error
        }
    }

    deinit { stop() }

    private func waitForListeners(timeout: Double) throws {
        let deadline = now() + timeout
        let prefix = "Forwarding from 127.0.0.1:"
        while true {
            var local: [Int: Int] = [:]
            for line in output().split(separator: "\n") where line.hasPrefix(prefix) {
                let parts = line.dropFirst(prefix.count).split(separator: " ")
                if parts.count == 3, parts[1] == "->", let port = Int(parts[0]), let remote = Int(parts[2]) { local[remote] = port }
            }
            if request.remotePorts.allSatisfy({ local[$0] != nil }) {
                ports = StreamPorts(echo: local[request.echoPort]!, discard: local[request.discardPort]!,
                                    source: local[request.sourcePort]!)
                return
            }
            if !child.isRunning { throw BenchError("portforward forward exited (\(child.reap(block: false))) before it listened") }
            if Self.stopSignalPending() { throw BenchError("interrupted") }
            if now() > deadline {
                throw BenchError("portforward forward did not listen within \(timeout.fixed(0)) s (--timeout)")
            }
            usleep(20_000)
        }
    }

    /// Ctrl-C while waiting: the bench's signals are blocked (its signalfd takes them later).
    private static func stopSignalPending() -> Bool {
        var pending = sigset_t()
        sigpending(&pending)
        return benchStopSignals.contains { sigismember(&pending, $0) == 1 }
    }

    /// Everything it wrote so far.
    func output() -> String { readFile(logPath) ?? "" }

    func lastLines(_ count: Int) -> [String] {
        output().split(separator: "\n").suffix(count).map(String.init)
    }

    /// From its `-v` lines: the sessions it made (`https://host:port: HTTP/2` each) and its backend.
    func sessions() -> [String] {
        output().split(separator: "\n").filter { $0.hasPrefix("session to ") }.map { String($0.dropFirst("session to ".count)) }
    }

    func backend() -> String? {
        output().split(separator: "\n").first { $0.hasPrefix("io: ") }.map { String($0.dropFirst(4)) }
    }

    /// SIGTERM, then SIGKILL after a grace period; the log file goes.
    func stop() {
        child.stop()
        unlink(logPath)
    }

    /// "exit status 1" once it ended, nil while it runs.
    var ended: String? { child.isRunning ? nil : child.reap(block: false) }
}
