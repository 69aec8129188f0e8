import CLinuxShim
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// `connrate`: plain TCP to any echo server (`--target HOST:PORT`), for the side-by-side table:
/// connect, send a small message, read its echo, close; P connections at a time, for T seconds
/// after a warm-up. A new TCP connection every time, so through `portforward forward` each one
/// is a new stream as a user would make it.
public final class ConnectionRateScenario {
    let reactor: ReactorBackend
    let address: SocketAddress
    let options: BenchOptions
    let size: Int
    private var workers: [ConnectionWorker] = []
    private var measuring = false
    private var stopping = false
    private(set) var completed = 0
    private(set) var failures: [String: Int] = [:]
    private var latencies = Latencies()
    private var startTime = 0.0, endTime = 0.0
    private var lastCount = 0, lastTime = 0.0
    private var progress: ProgressLine!
    private var signals: SignalWatcher?
    private var interrupted = false
    let message: UnsafeMutableRawPointer

    public init(reactor: ReactorBackend, address: SocketAddress, options: BenchOptions) {
        self.reactor = reactor
        self.address = address
        self.options = options
        size = min(max(1, options.messageSize), 65536)
        message = Pattern.bytes + 4096
        progress = ProgressLine(reactor: reactor, quiet: options.quiet) { [unowned self] in
            let time = now()
            let rate = Double(self.completed - self.lastCount) / max(time - self.lastTime, 1e-3)
            self.lastCount = self.completed
            self.lastTime = time
            return (self.measuring ? "" : "warm-up: ") + "\(rate.significant) connections/s"
        }
    }

    public func run() throws -> BenchResult {
        let parallel = max(1, options.concurrency ?? 1)
        signals = try SignalWatcher(benchStopSignals, reactor: reactor) { [unowned self] _ in
            self.interrupted = true
            self.reactor.stop()
        }
        for _ in 0..<parallel {
            let worker = ConnectionWorker(scenario: self)
            workers.append(worker)
            worker.next()
        }
        lastTime = now()
        progress.start()
        reactor.after(options.warmup) { [weak self] in
            guard let self else { return }
            self.measuring = true
            self.completed = 0
            self.lastCount = 0
            self.latencies = Latencies()
            self.startTime = now()
            self.reactor.after(self.options.duration) { [weak self] in self?.stop() }
        }
        try reactor.run()
        // The next run may use the same reactor: its signals are its own.
        signals?.stop()
        progress.stop()
        if interrupted { throw BenchError("interrupted") }
        let seconds = endTime - startTime
        let rate = seconds > 0 ? Double(completed) / seconds : 0
        var result = BenchResult(scenario: "connrate", title:
            "connrate: connect, \(size)-byte echo, close to \(address); \(parallel) at a time, "
            + "\(options.duration.fixed(1)) s after \(options.warmup.fixed(1)) s warm-up")
        result.row("connections", rate.significant, "per second")
        latencies.report("connection", label: "connection", into: &result)
        result.figure("connections", completed)
        result.figure("seconds", seconds)
        result.figure("connections_per_s", rate)
        result.figure("parallel", parallel)
        result.figure("failures", failures.values.reduce(0, +))
        for (reason, count) in failures.sorted(by: { $0.value > $1.value }) {
            result.problems.append("\(reason) (\(count) times)")
        }
        if completed == 0 && !failures.isEmpty {
            throw BenchError("no connection completed: \(failures.keys.sorted().joined(separator: "; "))")
        }
        return result
    }

    private func stop() {
        endTime = now()
        stopping = true
        progress.stop()
        reactor.stop()
    }

    fileprivate var isStopping: Bool { stopping }

    fileprivate func done(latency: UInt64) {
        completed += 1
        if measuring { latencies.record(latency) }
    }

    fileprivate func failed(_ reason: String) {
        failures[reason, default: 0] += 1
        // A server that refuses everything must not be hammered in a tight loop.
        if failures.values.reduce(0, +) > 100_000 { stop() }
    }
}

/// One connection at a time: connect, write the message, read it back, close, again.
private final class ConnectionWorker: CompletionHandler {
    unowned let scenario: ConnectionRateScenario
    var fd: FileDescriptor = -1
    var startedAt: UInt64 = 0
    var got = 0
    var sent = 0
    let buffer: UnsafeMutableRawPointer
    var reactor: ReactorBackend { scenario.reactor }

    enum Tag: UInt32 { case connect = 1, write, read }

    init(scenario: ConnectionRateScenario) {
        self.scenario = scenario
        buffer = .allocate(byteCount: scenario.size, alignment: 8)
    }

    deinit { buffer.deallocate() }

    func next() {
        guard !scenario.isStopping else { return }
        startedAt = Clock.nanoseconds()
        got = 0
        sent = 0
        do { fd = try Sockets.socket(for: scenario.address) } catch {
            scenario.failed("\(error)")
            _ = reactor.after(0.01) { [weak self] in self?.next() }
            return
        }
        Sockets.noDelay(fd)
        reactor.connect(fd, address: scenario.address, handler: self, tag: Tag.connect.rawValue)
    }

    func complete(_ completion: Completion) {
        if completion.result < 0 {
            let reason: String
            switch Tag(rawValue: completion.tag) {
            case .connect: reason = "connect: " + SystemError.reason(-completion.result)
            case .write: reason = "write: " + SystemError.reason(-completion.result)
            default: reason = "read: " + SystemError.reason(-completion.result)
            }
            return fail(reason)
        }
        switch Tag(rawValue: completion.tag) {
        case .connect:
            writeMore()
        case .write:
            sent += Int(completion.result)
            if sent < scenario.size { return writeMore() }
            readMore()
        case .read:
            if completion.result == 0 { return fail("the connection closed before the whole echo") }
            got += Int(completion.result)
            if got < scenario.size { return readMore() }
            if memcmp(buffer, scenario.message, scenario.size) != 0 { return fail("echo did not match what was sent") }
            reactor.close(fd)
            fd = -1
            scenario.done(latency: Clock.nanoseconds() - startedAt)
            next()
        case nil:
            break
        }
    }

    private func writeMore() {
        reactor.write(fd, from: scenario.message + sent, count: scenario.size - sent, handler: self, tag: Tag.write.rawValue)
    }

    private func readMore() {
        reactor.read(fd, into: buffer + got, count: scenario.size - got, handler: self, tag: Tag.read.rawValue)
    }

    private func fail(_ reason: String) {
        if fd >= 0 { reactor.close(fd) }
        fd = -1
        scenario.failed(reason)
        next()
    }
}
