import CLinuxShim
import PortForward
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A child process the bench started: its pid and the read end of its standard output.
final class Child {
    let pid: pid_t
    let name: String
    let output: FileDescriptor
    /// The write end of the child's standard input (a pipe): closing it tells a `--serve` child
    /// to go away.
    let input: FileDescriptor
    /// How it ended, once reaped.
    private var ending: String?
    private var pending: [UInt8] = []
    private var pipesClosed = false

    init(pid: pid_t, name: String, output: FileDescriptor, input: FileDescriptor) {
        self.pid = pid
        self.name = name
        self.output = output
        self.input = input
    }

    /// Starts `arguments` (looked up in PATH) with stdout to a pipe and stdin from a pipe;
    /// stderr is the bench's own.
    static func spawn(_ arguments: [String], name: String) throws -> Child {
        var out: [Int32] = [0, 0], inp: [Int32] = [0, 0]
        guard pf_pipe2(&out) == 0 else { throw SystemError("pipe") }
        guard pf_pipe2(&inp) == 0 else { throw SystemError("pipe") }
        Sockets.setBlocking(out[1], true)
        defer {
            close(out[1])
            close(inp[0])
        }
        let pid: pid_t
        do { pid = try ChildProcess.spawn(arguments, stdin: inp[0], stdout: out[1]) } catch {
            close(out[0])
            close(inp[1])
            throw error
        }
        return Child(pid: pid, name: name, output: out[0], input: inp[1])
    }

    /// Waits up to `seconds` for a line of standard output starting with `prefix`.
    func waitForLine(prefix: String, seconds: Double) throws -> String {
        let deadline = now() + seconds
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            while let newline = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                if line.hasPrefix(prefix) { return line }
            }
            let left = deadline - now()
            if left <= 0 { throw BenchError("\(name) did not start within \(seconds.fixed(0)) s") }
            var probe = pollfd(fd: output, events: Int16(POLLIN), revents: 0)
            let ready = poll(&probe, 1, Int32(left * 1000) + 1)
            if ready < 0 && pf_errno() != EINTR { throw SystemError("poll") }
            if ready <= 0 { continue }
            let count = read(output, &chunk, chunk.count)
            if count < 0 && (pf_errno() == EAGAIN || pf_errno() == EINTR) { continue }
            if count <= 0 {
                let status = reap(block: true)
                throw BenchError("\(name) exited before it was ready (\(status))")
            }
            pending.append(contentsOf: chunk[..<count])
        }
    }

    /// The exit status as words ("exit status 1"), "running" while it runs (with `block`: waits).
    @discardableResult
    func reap(block: Bool) -> String {
        if let ending { return ending }
        var status: Int32 = 0
        let result = waitpid(pid, &status, block ? 0 : WNOHANG)
        if result == 0 { return "running" }
        let signal = status & 0x7f
        let words = result < 0 ? "gone" : (signal == 0 ? "exit status \((status >> 8) & 0xff)" : "killed by signal \(signal)")
        ending = words
        return words
    }

    var isRunning: Bool { reap(block: false) == "running" }

    /// SIGTERM, then SIGKILL after `grace` seconds. Its standard input closes first (a
    /// `--watch-stdin` child goes away at that), its output once it has ended: on every path,
    /// once.
    func stop(grace: Double = 3) {
        if !pipesClosed && input >= 0 { close(input) }
        defer {
            if !pipesClosed && output >= 0 { close(output) }
            pipesClosed = true
        }
        if ending != nil { return }
        kill(pid, SIGTERM)
        let deadline = now() + grace
        while now() < deadline {
            if !isRunning { break }
            usleep(10_000)
        }
        if isRunning {
            kill(pid, SIGKILL)
            reap(block: true)
        }
    }

    /// Resident memory in KiB (VmRSS), nil once gone.
    var residentKiB: Int? { Self.residentKiB(pid: pid) }

    static func residentKiB(pid: pid_t) -> Int? {
        guard let status = readFile("/proc/\(pid)/status") else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let digits = line.dropFirst(6).filter { $0.isNumber }
            return Int(String(digits))
        }
        return nil
    }
}

/// Runs a command to completion (the `ip` calls); throws with its exit status.
func runCommand(_ arguments: [String]) throws {
    let child = try Child.spawn(arguments, name: arguments.joined(separator: " "))
    close(child.input)
    var sink = [UInt8](repeating: 0, count: 4096)
    while read(child.output, &sink, sink.count) > 0 {}
    close(child.output)
    let status = child.reap(block: true)
    if status != "exit status 0" {
        throw BenchError("\(arguments.joined(separator: " ")) failed (\(status))")
    }
}

/// The path of the running executable, to start its own relay and target server.
func executablePath() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard count > 0 else { return CommandLine.arguments[0] }
    return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// What `--spawn-pod` sets up: a network namespace with a target server in it (or the host's
/// network, without root), a pods file naming it, and a relay that knows it. Torn down by `stop`.
public final class SpawnedPod {
    public let namespace: String?
    public private(set) var target: RelayTarget!
    public private(set) var relayPID: pid_t = 0
    public private(set) var relayLine = ""
    public private(set) var targetLine = ""
    private var server: Child?
    private var relay: Child?
    private var podsFile: String?
    private var namespaceCreated = false
    public private(set) var notes: [String] = []

    /// `relayIO`/`serverIO`: backends for the relay and the target server; `connector`:
    /// `native` or `nsenter` (the relay's `--connector`); `copy`: the relay's `--copy`.
    public init(relayIO: IOBackendChoice, serverIO: IOBackendChoice, connector: String, copy: String, verbose: Bool) throws {
        let binary = executablePath()
        let isRoot = geteuid() == 0
        var name: String? = "pf-bench-\(getpid())"
        do {
            if isRoot {
                try runCommand(["ip", "netns", "add", name!])
                namespaceCreated = true
                try runCommand(["ip", "netns", "exec", name!, "ip", "link", "set", "lo", "up"])
            } else {
                name = nil
                notes.append("not root: the target server runs in the host network, not in a network namespace")
            }
        } catch {
            notes.append("cannot create a network namespace (\(error)): the target server runs in the host network")
            if namespaceCreated { _ = try? runCommand(["ip", "netns", "delete", name!]) }
            namespaceCreated = false
            name = nil
        }
        namespace = name
        do {
            var serve = [binary, "bench", "--serve", "all", "--port", name == nil ? "0" : "7100",
                         "--io", serverIO.rawValue, "--watch-stdin"]
            if let name { serve = ["ip", "netns", "exec", name] + serve }
            server = try Child.spawn(serve, name: "the target server")
            targetLine = try server!.waitForLine(prefix: "bench target ready:", seconds: 10)
            let ports = Self.ports(targetLine)
            guard let echo = ports["echo"], let discard = ports["discard"], let source = ports["source"] else {
                throw BenchError("unexpected target server line: \(targetLine)")
            }
            let pods = "/tmp/pf-bench-\(getpid())-pods.yaml"
            let entry = name.map { "{namespace: bench, name: target, netns: /run/netns/\($0)}" } ?? "{namespace: bench, name: target}"
            try writeFile(pods, "pods:\n  - \(entry)\n")
            podsFile = pods
            var arguments = [binary, "relay", "--listen", "127.0.0.1:0", "--pods", pods, "--io", relayIO.rawValue,
                             "--connector", connector, "--copy", copy, "--node", "bench"]
            if verbose { arguments.append("--verbose") }
            relay = try Child.spawn(arguments, name: "the relay")
            relayPID = relay!.pid
            relayLine = try relay!.waitForLine(prefix: "Relay listening on ", seconds: 10)
            let rest = relayLine.dropFirst("Relay listening on ".count)
            let address = rest.split(separator: " ").first.map(String.init) ?? ""
            let server = try ServerURL(parsing: "http://\(address)")
            target = RelayTarget(server: server, path: .init(namespace: "bench", pod: "target"),
                                 echoPort: echo, discardPort: discard, sourcePort: source)
        } catch {
            stop()
            throw error
        }
    }

    /// `echo=127.0.0.1:7100 discard=...` -> ports by mode.
    static func ports(_ line: String) -> [String: Int] {
        var result: [String: Int] = [:]
        for word in line.split(separator: " ") {
            let parts = word.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let colon = parts[1].lastIndex(of: ":"),
                  let port = Int(parts[1][parts[1].index(after: colon)...]) else { continue }
            result[String(parts[0])] = port
        }
        return result
    }

    public var relayResidentKiB: Int? { relay?.residentKiB }

    public var relayRunning: Bool { relay?.isRunning ?? false }

    public func stop() {
        relay?.stop()
        relay = nil
        server?.stop()
        server = nil
        if let podsFile { unlink(podsFile) }
        podsFile = nil
        if namespaceCreated, let namespace {
            _ = try? runCommand(["ip", "netns", "delete", namespace])
            namespaceCreated = false
        }
    }

    deinit { stop() }
}
