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
    /// `forward`'s options, as its command line takes them (no pod, no ports, no token).
    public var arguments: [String]
    /// `--token`: handed to the child in a file of its own (`--token-file`), so that it is not
    /// on a command line `ps` shows for the whole run.
    public var token: String?
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

    public init(arguments: [String], token: String?, pod: String, echoPort: Int, discardPort: Int?, sourcePort: Int?,
                wireProtocol: WireProtocol, server: String, copy: String) {
        self.arguments = arguments
        self.token = token
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
/// its `-v` session line, and its error lines when it fails. The file (and the token file, with
/// `--token`) sit in a directory of the bench's own (mkdtemp, 0700). The child ends with the bench
/// (`--exit-with-parent`: SIGTERM when the bench ends, even by SIGKILL); otherwise stopped with
/// SIGTERM, then SIGKILL.
final class ForwardClient {
    let request: ForwardRequest
    /// The process (no pipes: its output goes to `logPath`).
    private let child: Child
    /// The private directory holding the log and the token file.
    private let directory: String
    let logPath: String
    private var tokenPath: String?
    /// After a failure the log stays, for the lines the one error line leaves out.
    private var keepsLog = false
    private var stopped = false
    /// The local ports, by the pod's port's role.
    private(set) var ports = StreamPorts(echo: 0, discard: 0, source: 0)

    /// Starts the child with `--io` and `--copy` as given, and waits up to `timeout` seconds for
    /// it to listen on every port.
    init(_ request: ForwardRequest, io: IOBackendChoice, copy: String, timeout: Double) throws {
        self.request = request
        directory = try makePrivateDirectory("pf-bench-forward")
        logPath = directory + "/forward.log"
        var tokenPath: String?
        let started: Child
        do {
            let log = open(logPath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard log >= 0 else { throw SystemError("cannot create", subject: logPath) }
            defer { close(log) }
            var arguments = [executablePath(), "forward"] + request.arguments
            if let token = request.token {
                tokenPath = try writePrivateFile(in: directory, name: "token", token)
                arguments += ["--token-file", tokenPath!]
            }
            arguments += ["--exit-with-parent", "\(getpid())", "--io", io.rawValue, "--copy", copy,
                          "--address", "127.0.0.1", "-v", request.pod] + request.remotePorts.map { ":\($0)" }
            started = Child(pid: try ChildProcess.spawn(arguments, stdout: log, stderr: log), name: "portforward forward",
                            output: -1, input: -1)
        } catch {
            if let tokenPath { unlink(tokenPath) }
            unlink(logPath)
            rmdir(directory)
            throw error
        }
        child = started
        self.tokenPath = tokenPath
        do {
            try waitForListeners(timeout: timeout)
        } catch {
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
            for line in lines() where line.hasPrefix(prefix) {
                let parts = line.dropFirst(prefix.count).split(separator: " ")
                if parts.count == 3, parts[1] == "->", let port = Int(parts[0]), let remote = Int(parts[2]) { local[remote] = port }
            }
            if request.remotePorts.allSatisfy({ local[$0] != nil }) {
                ports = StreamPorts(echo: local[request.echoPort]!, discard: local[request.discardPort]!,
                                    source: local[request.sourcePort]!)
                return
            }
            // A Ctrl-C at the terminal reaches the child too: the bench was interrupted, whatever
            // the child then did.
            if Self.stopSignalPending() { throw BenchError("interrupted") }
            if !child.isRunning {
                throw BenchError("portforward forward exited (\(child.reap(block: false))) before it listened" + startExplanation())
            }
            if now() > deadline {
                throw BenchError("portforward forward did not listen within \(timeout.fixed(0)) s (--timeout)" + startExplanation())
            }
            usleep(20_000)
        }
    }

    /// ": its error lines", else its last line and where its log stays.
    private func startExplanation() -> String {
        let said = diagnostics()
        if !said.isEmpty { return ": " + said.joined(separator: " | ") }
        keepsLog = true
        return (lines().last.map { ": its last line: \($0)" } ?? ": it wrote nothing") + " (its log: \(logPath))"
    }

    /// Ctrl-C while waiting: the bench's signals are blocked (its signalfd takes them later).
    private static func stopSignalPending() -> Bool {
        var pending = sigset_t()
        sigpending(&pending)
        return benchStopSignals.contains { sigismember(&pending, $0) == 1 }
    }

    /// Its whole lines so far: a last line still being written (no newline yet) is left out.
    func lines() -> [Substring] {
        let text = readFile(logPath) ?? ""
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        lines.removeLast()  // after the last newline: empty, or a line not yet whole
        return lines.filter { !$0.isEmpty }
    }

    /// The lines that explain a failure: `error:` and `warning:` lines and those about the
    /// session to the server (`Lost connection to relay ...`, `Reconnected ...`, `Waiting up to
    /// ... for pod`, `Connection for port N reset: ...`), each once, at most `limit` of them.
    func diagnostics(limit: Int = 6) -> [String] {
        let prefixes = ["error:", "warning:", "Lost connection", "Reconnected", "Waiting up to", "Connection for port"]
        var seen: [String] = []
        var more = 0
        for line in lines() where prefixes.contains(where: { line.hasPrefix($0) }) {
            let text = line.hasPrefix("error: ") ? String(line.dropFirst(7)) : String(line)
            if seen.contains(text) { continue }
            if seen.count < limit { seen.append(text) } else { more += 1 }
        }
        if more > 0 { seen.append("\(more) more such lines") }
        return seen
    }

    /// The run failed (`failure`, or the scenario's problems): what the child said about it, and
    /// its exit status if it ended on its own, as one text; its log then stays, named here. Waits
    /// up to a second for the child's lines: a stream ends at the bench as soon as the child drops
    /// it, before the child has written why.
    func explainFailure(mentioningExit: Bool = true) -> String {
        let deadline = now() + 1
        // The reason is a line about the session (`Lost connection ...`) or an error; a warning
        // from its start (a token not sent over http://, say) is not, and a reset connection's
        // line may come before the session's.
        func reasonSaid() -> Bool {
            diagnostics().contains { !$0.hasPrefix("warning:") && !$0.hasPrefix("Connection for port") }
        }
        while !reasonSaid() && child.isRunning && now() < deadline {
            usleep(20_000)
        }
        var parts = ["portforward forward"]
        if mentioningExit, let ended { parts.append("exited (\(ended)),") }
        let said = diagnostics()
        parts.append(said.isEmpty ? "said nothing about it" : "said: " + said.joined(separator: " | "))
        keepsLog = true
        return parts.joined(separator: " ") + " (its log: \(logPath))"
    }

    /// From its `-v` lines: the sessions it made (`https://host:port: HTTP/2` each) and its backend.
    func sessions() -> [String] {
        lines().filter { $0.hasPrefix("session to ") }.map { String($0.dropFirst("session to ".count)) }
    }

    func backend() -> String? {
        lines().first { $0.hasPrefix("io: ") }.map { String($0.dropFirst(4)) }
    }

    /// SIGTERM, then SIGKILL after a grace period; the token file goes, and the log unless a
    /// failure kept it.
    func stop() {
        child.stop()
        guard !stopped else { return }
        stopped = true
        if let tokenPath { unlink(tokenPath) }
        if !keepsLog {
            unlink(logPath)
            rmdir(directory)
        }
    }

    /// "exit status 1" once it ended, nil while it runs.
    var ended: String? { child.isRunning ? nil : child.reap(block: false) }
}

/// A new directory only this user can enter (mkdtemp: mode 0700, a name no one could guess),
/// in $TMPDIR or /tmp.
func makePrivateDirectory(_ prefix: String) throws -> String {
    let base = getenv("TMPDIR").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
    var template = Array("\(base)/\(prefix)-XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else { throw SystemError("mkdtemp", subject: "\(base)/\(prefix)-XXXXXX") }
    return String(cString: made)
}

/// Writes `text` to a new file in `directory` (mkstemp: mode 0600, created by this call);
/// returns its path.
func writePrivateFile(in directory: String, name: String, _ text: String) throws -> String {
    var template = Array("\(directory)/\(name)-XXXXXX".utf8CString)
    let fd = mkstemp(&template)
    guard fd >= 0 else { throw SystemError("mkstemp", subject: "\(directory)/\(name)-XXXXXX") }
    defer { close(fd) }
    let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let bytes = Array(text.utf8)
    var written = 0
    while written < bytes.count {
        let count = bytes[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if count < 0 && pf_errno() == EINTR { continue }
        guard count > 0 else {
            let error = SystemError("cannot write", subject: path)
            unlink(path)
            throw error
        }
        written += count
    }
    return path
}
