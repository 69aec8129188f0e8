import Foundation
import Testing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

// The end-to-end harness: real `portforward` processes, real sockets, pods in real network
// namespaces. Every process a test starts belongs to a `Scene`, which kills them (and deletes its
// namespaces and files) when the test ends, passed or failed.

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

enum E2E {
    /// The package root: this file is Tests/EndToEndTests/Harness.swift.
    static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// The binary under test: `PORTFORWARD_BINARY` (an ASan build, an older build to show a test
    /// fails there), else this package's debug build.
    static let binary = ProcessInfo.processInfo.environment["PORTFORWARD_BINARY"].flatMap { $0.isEmpty ? nil : $0 }
        ?? packageRoot + "/.build/debug/portforward"

    /// The reactor backend every relay and forwarder of this run uses.
    static let io: String = ProcessInfo.processInfo.environment["PORTFORWARD_IO"].flatMap { $0.isEmpty ? nil : $0 } ?? "epoll"

    /// The copy mode of relays and forwarders whose test does not choose one: PORTFORWARD_COPY
    /// (splice or buffers), else none is given and the binary's default (auto) applies.
    static let copy: CopyChoice? = ProcessInfo.processInfo.environment["PORTFORWARD_COPY"].flatMap { text in
        guard !text.isEmpty else { return nil }
        guard let choice = CopyChoice(rawValue: text) else { fatalError("PORTFORWARD_COPY=\(text): expected splice or buffers") }
        return choice
    }

    /// Why the end-to-end tests cannot run here (nil: they can). Checked once.
    static let unavailableReason: String? = {
        if geteuid() != 0 { return "not root: the end-to-end tests create network namespaces (ip netns add)" }
        for tool in ["ip", "socat", "ss", "curl", "nghttp", "nsenter"] where which(tool) == nil {
            return "\(tool) is not installed (make deps installs it)"
        }
        let probe = "pf-e2e-probe-\(randomSuffix())"
        let added = try? run(["ip", "netns", "add", probe], timeout: 10)
        guard let added, added.status == 0 else {
            return "cannot create a network namespace (ip netns add): \(added?.stderr.trimmingCharacters(in: .whitespacesAndNewlines) ?? "ip did not run")"
        }
        _ = try? run(["ip", "netns", "del", probe], timeout: 10)
        return nil
    }()

    /// Skips the calling test, with the reason shown, when the environment cannot run it; fails
    /// it when the binary has not been built.
    static func requireEnvironment() throws {
        if let reason = unavailableReason {
            Issue.record(Comment(rawValue: "skipped: \(reason)"), severity: .warning)
            try Test.cancel(Comment(rawValue: reason))
        }
        try requireBinary()
    }

    static func requireBinary() throws {
        guard access(binary, X_OK) == 0 else {
            throw HarnessError("\(binary) does not exist: build it first (swift build --build-tests)")
        }
    }

    static func which(_ tool: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        for directory in path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"] {
            let candidate = "\(directory)/\(tool)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    static func randomSuffix() -> String {
        String(UInt32.random(in: 0...UInt32.max), radix: 36)
    }

    /// Runs a command to completion (killed at the deadline).
    static func run(_ arguments: [String], timeout: Double = 30, directory: String? = nil) throws -> (status: Int32, stdout: String, stderr: String) {
        let directory = directory ?? NSTemporaryDirectory()
        let name = "\(directory)/run-\(randomSuffix())"
        let child = try Child.spawn(arguments, stdout: name + ".out", stderr: name + ".err", name: arguments.first ?? "?")
        defer {
            unlink(name + ".out")
            unlink(name + ".err")
        }
        guard let status = child.wait(timeout: timeout) else {
            child.kill()
            throw HarnessError("\(arguments.joined(separator: " ")) did not finish in \(timeout) s; output: \(child.output)")
        }
        child.recordSanitizerReport()
        return (status, child.stdout, child.stderr)
    }
}

/// glibc's posix_spawn_file_actions_addclosefrom_np (2.34+), which Swift's Glibc module does not
/// show: looked up at run time.
private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
private let addCloseFrom: AddCloseFrom? = {
    guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
    return unsafeBitCast(symbol, to: AddCloseFrom.self)
}()

/// A process started with posix_spawn in a process group of its own, its output in files.
final class Child: @unchecked Sendable {
    let pid: pid_t
    let name: String
    let stdoutPath: String
    let stderrPath: String
    private(set) var exitStatus: Int32?
    /// The raw wait status, for telling a signal from an exit.
    private(set) var rawStatus: Int32 = 0

    private init(pid: pid_t, name: String, stdoutPath: String, stderrPath: String) {
        self.pid = pid
        self.name = name
        self.stdoutPath = stdoutPath
        self.stderrPath = stderrPath
    }

    static func spawn(_ arguments: [String], stdout: String, stderr: String, name: String) throws -> Child {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        // Descriptors of other tests running in this process must not leak into the child.
        if let closeFrom = addCloseFrom { _ = closeFrom(&actions, 3) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let status = posix_spawnp(&pid, arguments[0], &actions, &attributes, argv, environ)
        guard status == 0 else {
            throw HarnessError("cannot start \(arguments[0]): \(String(cString: strerror(status)))")
        }
        return Child(pid: pid, name: name, stdoutPath: stdout, stderrPath: stderr)
    }

    var stdout: String { Self.read(stdoutPath) }
    var stderr: String { Self.read(stderrPath) }
    var output: String { "[\(name) stdout]\n\(stdout)[\(name) stderr]\n\(stderr)" }

    private static func read(_ path: String) -> String {
        (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    }

    /// Reaps the child if it has exited.
    @discardableResult
    func poll() -> Int32? {
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        if result == pid {
            rawStatus = status
            // WIFEXITED / WEXITSTATUS, WIFSIGNALED / WTERMSIG by hand (macros).
            let signal = status & 0x7F
            exitStatus = signal == 0 ? (status >> 8) & 0xFF : 128 + signal
        } else if result < 0 && errno == ECHILD {
            exitStatus = -1
        }
        return exitStatus
    }

    var isRunning: Bool { poll() == nil }

    /// The signal that ended the child, if one did.
    var terminatingSignal: Int32? {
        guard exitStatus != nil else { return nil }
        let signal = rawStatus & 0x7F
        return signal == 0 ? nil : signal
    }

    /// Waits for the exit status (nil at the deadline).
    func wait(timeout: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let status = poll() { return status }
            usleep(10_000)
        }
        return poll()
    }

    /// SIGTERM to the whole group, then SIGKILL if it lingers.
    func kill(grace: Double = 2) {
        if isRunning {
            Glibc.kill(-pid, SIGTERM)
            if wait(timeout: grace) == nil {
                Glibc.kill(-pid, SIGKILL)
                _ = wait(timeout: 5)
            }
        }
        // Whatever the group left behind (socat children of a relay, say).
        Glibc.kill(-pid, SIGKILL)
    }

    /// Waits until the output (stdout and stderr) satisfies `match`, which returns a value.
    func waitFor<T>(_ what: String, timeout: Double = 15, _ match: (String) -> T?) throws -> T {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let text = stdout + stderr
            if let found = match(text) { return found }
            if !isRunning {
                if let found = match(stdout + stderr) { return found }
                throw HarnessError("\(name) exited (status \(exitStatus ?? -1)) before \(what)\n\(output)")
            }
            if Date() >= deadline { throw HarnessError("\(name): no \(what) within \(timeout) s\n\(output)") }
            usleep(20_000)
        }
    }

    /// What a sanitizer printed on the child's stderr ("==PID==ERROR: AddressSanitizer: ..." and
    /// everything after it), if anything: an ASan build (`make test-asan`) reports there and exits
    /// non-zero, which a test that only looks at the output it expects would not notice.
    var sanitizerReport: String? {
        let text = stderr
        guard let found = ["ERROR: AddressSanitizer", "ERROR: LeakSanitizer"].compactMap({ text.range(of: $0) })
            .min(by: { $0.lowerBound < $1.lowerBound }) else { return nil }
        let lineStart = text[..<found.lowerBound].lastIndex(of: "\n").map { text.index(after: $0) } ?? text.startIndex
        return String(text[lineStart...])
    }

    /// Records a test issue when a sanitizer reported on this child.
    func recordSanitizerReport() {
        if let report = sanitizerReport {
            Issue.record("\(name) (pid \(pid), exit status \(exitStatus.map(String.init) ?? "none yet")): \(report)")
        }
    }

    /// How many sockets the process holds open (pipes and files not counted: pipe pools keep
    /// spare pipes by design).
    func openSockets() -> Int {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd") else { return -1 }
        return entries.filter { entry in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(entry)"))?.hasPrefix("socket:") == true
        }.count
    }

    /// Pipes the process holds open. Splice mode's pipe pool opens one at start and keeps its
    /// spare pipes; buffers mode opens none.
    func openPipes() -> Int {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd") else { return -1 }
        return entries.filter { entry in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(entry)"))?.hasPrefix("pipe:") == true
        }.count
    }

    /// The arguments the process runs with, from /proc (what was really started, whatever the
    /// harness meant to pass).
    func commandLine() -> [String] {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return [] }
        return data.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The process's children (the nsenter connector's socat processes, say), with their state.
    func children() -> [(pid: String, state: String)] {
        guard let result = try? E2E.run(["ps", "--ppid", "\(pid)", "-o", "pid=,stat="], timeout: 10) else { return [] }
        return result.stdout.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            return fields.count == 2 ? (String(fields[0]), String(fields[1])) : nil
        }
    }

    /// VmRSS from /proc/PID/status, in bytes.
    func residentBytes() throws -> Int {
        let text = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kilobytes = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else {
            throw HarnessError("no VmRSS in /proc/\(pid)/status")
        }
        return kilobytes * 1024
    }
}

/// How the relay reaches pods, as the relay-based tests are parameterized.
enum ConnectorKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case native, nsenter
    var testDescription: String { "connector \(rawValue)" }
}

/// How a stream's bytes move in the relay and the client (`--copy`), as the data-integrity tests
/// are parameterized: the splice path and the shared-buffer write path each carry every case.
enum CopyChoice: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case splice, buffers
    var testDescription: String { "copy \(rawValue)" }
    var arguments: [String] { ["--copy", rawValue] }

    /// Records an issue unless the relay and the forwarder were started with this mode and hold
    /// pipes only if they splice. Called once the bytes have moved, so a mode that silently fell
    /// back shows. An nsenter relay holds a pipe per connection for its socat's errors, so there
    /// only the command line tells.
    func expectUsed(relay: RelayProcess, forwarder: ForwarderProcess, connector: ConnectorKind) {
        for process in [relay.child, forwarder.child] {
            let line = process.commandLine()
            let flag = line.firstIndex(of: "--copy").flatMap { line.indices.contains($0 + 1) ? line[$0 + 1] : nil }
            #expect(flag == rawValue, "\(process.name) runs with --copy \(flag ?? "(none)"), not \(rawValue): \(line)")
            if process === relay.child && connector == .nsenter { continue }
            let pipes = process.openPipes()
            switch self {
            case .splice: #expect(pipes > 0, "\(process.name) holds no pipe: it does not splice")
            case .buffers: #expect(pipes == 0, "\(process.name) holds \(pipes) pipe descriptors in buffers mode")
            }
        }
    }
}

/// A network namespace standing for a pod.
struct PodNamespace {
    let name: String
    var path: String { "/run/netns/\(name)" }
}

struct RelayProcess {
    let child: Child
    let host: String
    let port: Int
    /// "https" for a relay started with --tls-cert-file.
    var scheme = "http"
    /// The server URL's path: a relay behind a proxy that serves it under a prefix.
    var path = ""
    var url: String { "\(scheme)://\(host):\(port)\(path)" }
}

struct ForwarderProcess {
    let child: Child
    /// Pod port -> the local port chosen for it.
    let localPorts: [Int: Int]
    /// Lines "Forwarding from ADDRESS:PORT -> REMOTE" as printed.
    let lines: [String]

    func local(_ remote: Int) throws -> Int {
        guard let port = localPorts[remote] else { throw HarnessError("no local port for pod port \(remote): \(lines)") }
        return port
    }

    /// Connects to the local port of `remote`, a pod port that is refused: the connection must
    /// close with nothing read. Returns the client's line "error: forwarding port REMOTE to pod
    /// default/web: ...".
    func refusedLine(_ remote: Int) throws -> String {
        let fd = try Net.connect("127.0.0.1", try local(remote))
        let closed = Net.readUntilClosed(fd, timeout: 15)
        close(fd)
        #expect(closed.outcome == "eof" || closed.outcome == "reset", "the connection to a refused port: \(closed.outcome)")
        #expect(closed.bytes == 0)
        let prefix = "error: forwarding port \(remote) to pod default/web"
        return try child.waitFor("the line \"\(prefix): ...\"", timeout: 10) { text in
            text.split(separator: "\n").first { $0.contains(prefix) }.map(String.init)
        }
    }
}

/// Everything one test starts; `tearDown` undoes it.
final class Scene: @unchecked Sendable {
    let directory: String
    private(set) var children: [Child] = []
    private(set) var namespaces: [PodNamespace] = []
    let node = "e2e-node"

    init() throws {
        var template = Array("\(NSTemporaryDirectory())/pf-e2e-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw HarnessError("mkdtemp failed") }
        directory = String(cString: made)
    }

    func tearDown() {
        for child in children.reversed() { child.kill() }
        for child in children { child.recordSanitizerReport() }
        for namespace in namespaces {
            // The pod's servers and whatever the nsenter connector started in it.
            if let pids = try? E2E.run(["ip", "netns", "pids", namespace.name], timeout: 10) {
                for pid in pids.stdout.split(separator: "\n").compactMap({ pid_t($0) }) { Glibc.kill(pid, SIGKILL) }
            }
            _ = try? E2E.run(["ip", "netns", "del", namespace.name], timeout: 10)
        }
        _ = try? E2E.run(["rm", "-rf", directory], timeout: 10)
    }

    /// Starts a process that lives until the scene ends.
    func start(_ arguments: [String], name: String) throws -> Child {
        let base = "\(directory)/\(name)-\(children.count)"
        let child = try Child.spawn(arguments, stdout: base + ".out", stderr: base + ".err", name: name)
        children.append(child)
        return child
    }

    /// The output of every process so far, for failure messages.
    var logs: String { children.map(\.output).joined(separator: "\n") }

    // MARK: pods

    /// A name for a namespace not made yet (`makeNamespace(named:)` makes it).
    func namespaceName() -> String { "pf-e2e-\(E2E.randomSuffix())" }

    /// A fresh network namespace with its loopback up.
    func makeNamespace(named name: String? = nil) throws -> PodNamespace {
        let namespace = PodNamespace(name: name ?? namespaceName())
        let added = try E2E.run(["ip", "netns", "add", namespace.name], timeout: 10, directory: directory)
        guard added.status == 0 else { throw HarnessError("ip netns add \(namespace.name): \(added.stderr)") }
        namespaces.append(namespace)
        let up = try E2E.run(["ip", "-n", namespace.name, "link", "set", "lo", "up"], timeout: 10, directory: directory)
        guard up.status == 0 else { throw HarnessError("ip link set lo up in \(namespace.name): \(up.stderr)") }
        return namespace
    }

    /// A socat server on `port` inside the namespace; `address` is socat's other side
    /// (EXEC:cat echoes). Returns once it listens.
    @discardableResult
    func serve(in namespace: PodNamespace, port: Int, address: String = "EXEC:cat") throws -> Child {
        let child = try start(["ip", "netns", "exec", namespace.name, "socat", "-t", "30",
                               "TCP-LISTEN:\(port),fork,reuseaddr,backlog=512", address], name: "pod-\(port)")
        try waitListening(in: namespace, port: port, child: child)
        return child
    }

    /// Returns once something listens on `port` in the namespace.
    func waitListening(in namespace: PodNamespace, port: Int, child: Child) throws {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            let listing = try E2E.run(["ss", "-N", namespace.name, "-Hltn", "sport = :\(port)"], timeout: 10, directory: directory)
            if listing.stdout.contains(":\(port)") { return }
            if !child.isRunning { break }
            usleep(20_000)
        }
        throw HarnessError("the pod's server on port \(port) did not start\n\(child.output)")
    }

    // MARK: relay and forwarder

    /// A relay that knows the pods `name -> namespace`, listening on a free port.
    func startRelay(pods: [String: PodNamespace], connector: ConnectorKind, listen: String = "127.0.0.1:0",
                    copy: CopyChoice? = nil, extra: [String] = []) throws -> RelayProcess {
        var yaml = "pods:\n"
        for (name, namespace) in pods.sorted(by: { $0.key < $1.key }) {
            yaml += "  - {namespace: default, name: \(name), netns: \(namespace.path)}\n"
        }
        return try startRelay(podsFile: yaml, connector: connector, listen: listen, copy: copy, extra: extra)
    }

    /// A relay whose pods file is `yaml`, as given; `copy` nil means `E2E.copy`.
    func startRelay(podsFile yaml: String, connector: ConnectorKind, listen: String = "127.0.0.1:0",
                    copy: CopyChoice? = nil, extra: [String] = []) throws -> RelayProcess {
        let file = "\(directory)/pods.yaml"
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        let child = try start([E2E.binary, "relay", "--listen", listen, "--node", node, "--pods", file,
                               "--connector", connector.rawValue, "--io", E2E.io] + ((copy ?? E2E.copy)?.arguments ?? []) + extra,
                          name: "relay")
        let port = try child.waitFor("the line \"Relay listening on ...\"") { text -> Int? in
            guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Relay listening on ") }) else { return nil }
            // "Relay listening on 127.0.0.1:PORT (node ...)"
            let address = line.dropFirst("Relay listening on ".count).prefix { $0 != " " }
            return address.split(separator: ":").last.flatMap { Int($0) }
        }
        return RelayProcess(child: child, host: listen.hasPrefix("[") ? "[::1]" : "127.0.0.1", port: port)
    }

    /// `portforward forward` with `specs`, each ":REMOTE" or "LOCAL:REMOTE"; returns once every
    /// spec printed its "Forwarding from 127.0.0.1:PORT -> REMOTE" line (and the ::1 one, when
    /// `addresses` is localhost).
    /// With `serverFromEnvironment`, the relay's URL is given as PORTFORWARD_SERVER, not --server.
    /// `copy` nil means `E2E.copy`.
    func startForwarder(relay: RelayProcess, pod: String, remotePorts: [Int], copy: CopyChoice? = nil, extra: [String] = [],
                        serverFromEnvironment: Bool = false) throws -> ForwarderProcess {
        let command = serverFromEnvironment
            ? ["env", "PORTFORWARD_SERVER=\(relay.url)", E2E.binary, "forward"]
            : [E2E.binary, "forward", "--server", relay.url]
        let child = try start(command + ["--io", E2E.io] + ((copy ?? E2E.copy)?.arguments ?? []) + extra + [pod]
                              + remotePorts.map { ":\($0)" }, name: "forward")
        let lines = try child.waitFor("a \"Forwarding from\" line for every port") { text -> [String]? in
            let lines = text.split(separator: "\n").map(String.init).filter { $0.hasPrefix("Forwarding from ") }
            let complete = remotePorts.allSatisfy { remote in
                lines.contains { $0.hasPrefix("Forwarding from 127.0.0.1:") && $0.hasSuffix(" -> \(remote)") }
                    && lines.contains { $0.hasPrefix("Forwarding from [::1]:") && $0.hasSuffix(" -> \(remote)") }
            }
            return complete ? lines : nil
        }
        var ports: [Int: Int] = [:]
        for line in lines where line.hasPrefix("Forwarding from 127.0.0.1:") {
            let parts = line.dropFirst("Forwarding from 127.0.0.1:".count).components(separatedBy: " -> ")
            if parts.count == 2, let local = Int(parts[0]), let remote = Int(parts[1]) { ports[remote] = local }
        }
        return ForwarderProcess(child: child, localPorts: ports, lines: lines)
    }

    /// TCP connections in the namespace that are neither listening nor in TIME-WAIT: the pod's
    /// side of connections still open.
    func podConnections(_ namespace: PodNamespace) throws -> [String] {
        let listing = try E2E.run(["ss", "-N", namespace.name, "-Htan"], timeout: 10, directory: directory)
        return listing.stdout.split(separator: "\n").map(String.init)
            .filter { !$0.hasPrefix("LISTEN") && !$0.hasPrefix("TIME-WAIT") && !$0.isEmpty }
    }

    /// A pod namespace with an echo server on `port`, a relay for it, named `pod`.
    func echoPod(named pod: String = "web", port: Int = 7000, connector: ConnectorKind,
                 copy: CopyChoice? = nil) throws -> (PodNamespace, RelayProcess) {
        let namespace = try makeNamespace()
        try serve(in: namespace, port: port)
        let relay = try startRelay(pods: [pod: namespace], connector: connector, copy: copy)
        return (namespace, relay)
    }
}

/// Runs `body` in a fresh scene, skipping when the environment cannot, and always tearing down.
func withScene(_ body: (Scene) throws -> Void) throws {
    try E2E.requireEnvironment()
    let scene = try Scene()
    defer { scene.tearDown() }
    do {
        try body(scene)
    } catch {
        // The error, with the processes' output to tell what went wrong.
        Issue.record("\(error)\n--- logs ---\n\(scene.logs)")
    }
}
