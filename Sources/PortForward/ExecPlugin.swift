import CLinuxShim
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A kubeconfig user's exec credential plugin, run as client-go runs it: the kubeconfig's
/// command and arguments, the parent's environment plus the entry's `env` plus
/// `KUBERNETES_EXEC_INFO`, standard input closed (never interactive), standard error passed
/// through to the user; its `ExecCredential` is kept until its `expirationTimestamp`.
///
/// The run blocks the calling thread, bounded by `timeout`: the client asks for the credential
/// at a dial and for each new stream; the plugin runs only when the cached credential has expired
/// (or after a 401), and then the loop waits for it (docs/PROTOCOL.md, "Limits").
public final class ExecPlugin {
    public let exec: Kubeconfig.Exec
    public let cluster: Kubeconfig.Cluster?
    /// How long one run may take before it is killed.
    public var timeout: Double = 60
    /// The most standard output read from one run.
    public static let maximumOutput = 1 << 20
    public private(set) var cached: ExecCredential?
    /// After a failed run the plugin is not run again for this long (the failure is given
    /// instead): each run may hold the client's thread up to `timeout`, and a broken plugin
    /// would otherwise run on every new connection.
    public var failureBackoff: Double = 5
    private var lastFailure: (error: Failure, at: Double)?
    /// How many times the plugin ran (for tests and `-v`).
    public private(set) var runs = 0

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public init(exec: Kubeconfig.Exec, cluster: Kubeconfig.Cluster?) {
        self.exec = exec
        self.cluster = exec.provideClusterInfo ? cluster : nil
    }

    /// The cached credential while it is valid at `now` (seconds since the epoch), else a new run's.
    public func credential(now: Int = Int(time(nil))) throws -> ExecCredential {
        if let cached, cached.valid(at: now) { return cached }
        cached = nil
        if let lastFailure, Self.now() - lastFailure.at < failureBackoff { throw lastFailure.error }
        do {
            let fresh = try run()
            cached = fresh
            lastFailure = nil
            return fresh
        } catch let error as Failure {
            lastFailure = (error, Self.now())
            throw error
        }
    }

    /// The server refused the credential (401): the next `credential` runs the plugin again.
    public func forget() { cached = nil }

    private func run() throws -> ExecCredential {
        runs += 1
        var environment: [String] = []
        var index = 0
        while let entry = environ[index] {
            environment.append(String(cString: entry))
            index += 1
        }
        for pair in exec.env { environment.append("\(pair.name)=\(pair.value)") }
        environment.append("KUBERNETES_EXEC_INFO=" + ExecCredential.execInfo(apiVersion: exec.apiVersion, cluster: cluster))
        var output: [Int32] = [-1, -1]
        // Blocking on both ends (the plugin writes to its end as to any stdout); CLOEXEC so that
        // only the dup2'd copy reaches the child.
        guard pipe(&output) == 0 else { throw SystemError("pipe") }
        for fd in output { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { if null >= 0 { close(null) } }
        let pid: pid_t
        do {
            pid = try ChildProcess.spawn([exec.command] + exec.args, stdin: null >= 0 ? null : nil, stdout: output[1],
                                         environment: environment)
        } catch let error as SystemError {
            close(output[0])
            close(output[1])
            var text = "exec plugin \(exec.command): \(error.reason)"
            if let hint = exec.installHint, !hint.isEmpty { text += " (\(hint.split(separator: "\n").joined(separator: " ")))" }
            throw Failure(description: text)
        }
        close(output[1])
        defer { close(output[0]) }
        let deadline = Self.now() + timeout
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        var timedOut = false
        var readFailed = false
        reading: while true {
            let left = deadline - Self.now()
            if left <= 0 { timedOut = true; break }
            var poll = pollfd(fd: output[0], events: Int16(POLLIN), revents: 0)
            let ready = Glibc.poll(&poll, 1, Int32(min(left * 1000, 1000)) + 1)
            if ready < 0 && pf_errno() != EINTR { readFailed = true; break }
            if ready <= 0 { continue }
            let count = Glibc.read(output[0], &chunk, chunk.count)
            if count < 0 { if pf_errno() == EINTR { continue }; readFailed = true; break reading }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[..<count])
            if bytes.count > Self.maximumOutput { break }
        }
        if timedOut || readFailed || bytes.count > Self.maximumOutput { kill(pid, SIGKILL) }
        // The plugin may close its output and go on running: its exit is awaited within the same
        // deadline, then it is killed.
        var status: Int32 = 0
        while true {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid || (reaped < 0 && pf_errno() != EINTR) { break }
            if Self.now() >= deadline {
                timedOut = true
                kill(pid, SIGKILL)
                while waitpid(pid, &status, 0) < 0 && pf_errno() == EINTR {}
                break
            }
            usleep(2_000)
        }
        if timedOut { throw Failure(description: "exec plugin \(exec.command): no answer within \(Int(timeout)) s") }
        if bytes.count > Self.maximumOutput {
            throw Failure(description: "exec plugin \(exec.command): more than \(Self.maximumOutput) bytes of output")
        }
        let exited = status & 0x7f == 0
        let code = (status >> 8) & 0xff
        guard exited, code == 0 else {
            throw Failure(description: "exec plugin \(exec.command): " + (exited ? "exited with status \(code)" : "killed by signal \(status & 0x7f)"))
        }
        do {
            return try ExecCredential(output: String(decoding: bytes, as: UTF8.self), apiVersion: exec.apiVersion)
        } catch {
            throw Failure(description: "exec plugin \(exec.command): \(error)")
        }
    }

    private static func now() -> Double {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }
}
