import CNGHTTP2
import HTTP2
import PortForward
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

public enum Direction: String, CaseIterable, Sendable {
    case upload, download, both
}

public enum ScenarioKind: String, CaseIterable, Sendable {
    case throughput, fanout, rr, connrate
}

/// Everything a bench run was asked for.
public struct BenchOptions: Sendable {
    public var scenario: ScenarioKind = .throughput
    public var connections = 1
    /// Streams (throughput, rr: default 1; fanout: default 10,000).
    public var streams: Int?
    public var direction: Direction = .both
    public var duration = 5.0
    public var warmup = 1.0
    /// Message size for rr, fanout and connrate echoes.
    public var size: Int?
    /// fanout: streams opening at once; churn: cycles in flight; connrate: connections at once.
    public var concurrency: Int?
    /// fanout: how long the streams are held before the second echo.
    public var hold = 1.0
    /// fanout: give up on a phase after this long.
    public var phaseTimeout = 60.0
    public var quiet = false
    public var verbose = false

    public init() {}

    var streamCount: Int { streams ?? (scenario == .fanout ? 10_000 : 1) }
    var messageSize: Int { size ?? (scenario == .connrate ? 4 : (scenario == .fanout ? 16 : 64)) }
}

/// How a run's streams reach the pod.
public enum StreamRoute: Sendable {
    /// h2c streams on `--connections` HTTP/2 connections to a relay (or gateway).
    case relay(RelayTarget)
    /// Plain TCP connections, one per stream, to local ports (a `portforward forward` child's,
    /// each forwarding to the pod's port of the same role).
    case local(StreamPorts)

    /// The ports streams are opened to, by role.
    var ports: StreamPorts {
        switch self {
        case .relay(let target): StreamPorts(echo: target.echoPort, discard: target.discardPort, source: target.sourcePort)
        case .local(let ports): ports
        }
    }

    /// "over 2 connections", for a title.
    func carriers(_ options: BenchOptions) -> String {
        switch self {
        case .relay: "over \(options.connections) connection\(options.connections == 1 ? "" : "s")"
        case .local: "over TCP (a connection each) through the forward client"
        }
    }
}

/// The ports a run opens streams to: the pod's (h2c to a relay), or the local ports a forward
/// client listens on for them.
public struct StreamPorts: Sendable {
    public var echo: Int
    public var discard: Int
    public var source: Int
    public var host = "127.0.0.1"

    public init(echo: Int, discard: Int, source: Int) {
        self.echo = echo
        self.discard = discard
        self.source = source
    }
}

/// What every scenario over a relay or a forward client shares: the reactor, the connections, a
/// progress line, a watchdog, Ctrl-C, and how it ends.
class RelayScenario: StreamEvents {
    let reactor: ReactorBackend
    let route: StreamRoute
    let ports: StreamPorts
    let options: BenchOptions
    var connections: [any StreamCarrier] = []
    let counters = Counters()
    var progress: ProgressLine!
    var result: BenchResult
    private var signals: SignalWatcher?
    private(set) var finished = false
    var failure: String?
    /// Reasons streams failed, with counts (the first few kept).
    var streamErrors: [String: Int] = [:]
    /// Set by the runner when it spawned the relay: its resident memory, for the report.
    var relayResidentKiB: () -> Int? = { nil }

    init(reactor: ReactorBackend, route: StreamRoute, options: BenchOptions, title: String) {
        self.reactor = reactor
        self.route = route
        ports = route.ports
        self.options = options
        result = BenchResult(scenario: options.scenario.rawValue, title: title)
        progress = ProgressLine(reactor: reactor, quiet: options.quiet) { [unowned self] in self.progressText() }
    }

    /// Runs the scenario to its end; throws when it could not run at all.
    func run() throws -> BenchResult {
        signals = try SignalWatcher(benchStopSignals, reactor: reactor) { [unowned self] _ in
            self.fail("interrupted")
        }
        var carriers: [any StreamCarrier] = []
        switch route {
        case .relay(let target):
            for index in 0..<options.connections { carriers.append(BenchConnection(reactor: reactor, target: target, index: index)) }
        case .local(let ports):
            carriers.append(LocalConnections(reactor: reactor, host: ports.host))
        }
        var pending = carriers.count
        for (index, connection) in carriers.enumerated() {
            connection.onConnect = { [unowned self] error in
                if let error { return self.fail(error) }
                pending -= 1
                if pending == 0 { self.begin() }
            }
            connection.onClose = { [unowned self] reason in
                if !self.finished { self.fail("the relay closed connection \(index + 1): \(reason ?? "closed")") }
            }
            connections.append(connection)
            connection.connect()
        }
        progress.start()
        try reactor.run()
        // The next run may use the same reactor: its signals are its own.
        signals?.stop()
        progress.stop()
        for connection in connections { connection.close(now: true) }
        if let failure { throw BenchError(failure) }
        for (reason, count) in streamErrors.sorted(by: { $0.value > $1.value }) {
            result.problems.append(count == 1 ? reason : "\(reason) (\(count) streams)")
        }
        return result
    }

    /// All connections are up.
    func begin() {}

    func progressText() -> String { "" }

    /// Ends the run with an error.
    func fail(_ reason: String) {
        if finished { return }
        failure = reason
        finish()
    }

    /// Ends the run: the reactor stops at the end of this turn.
    func finish() {
        if finished { return }
        finished = true
        progress.stop()
        reactor.stop()
    }

    /// The connection for stream `slot`: round robin.
    func connection(for slot: Int) -> any StreamCarrier { connections[slot % connections.count] }

    func open(_ stream: BenchStream, port: Int) {
        do { try stream.connection.open(stream, port: port) } catch { fail("cannot open a stream: \(error)") }
    }

    func noteError(_ reason: String) {
        streamErrors[reason, default: 0] += 1
    }

    /// The text a refused stream's body carried.
    func refusal(_ stream: BenchStream) -> String {
        let text = String(decoding: stream.errorBody, as: UTF8.self).trimmedSpaces
        let line = text.split(separator: "\n").first.map(String.init) ?? ""
        return "relay answered \(stream.status)" + (line.isEmpty ? "" : ": \(line)")
    }

    /// The relay answered a stream with an error status and ended its side; `reason` has the
    /// status and the relay's one line. By default the run fails with it.
    func refused(_ stream: BenchStream, reason: String) {
        fail(reason)
    }

    // MARK: StreamEvents, for subclasses to refine

    func responded(_ stream: BenchStream, status: Int) {}

    func received(_ stream: BenchStream, _ bytes: UnsafeRawBufferPointer) {
        if stream.status != 200 && stream.errorBody.count < 1024 { stream.errorBody.append(contentsOf: bytes) }
    }

    func ended(_ stream: BenchStream) {
        guard stream.status != 200, !stream.refusalSeen, !finished else { return }
        stream.refusalSeen = true
        refused(stream, reason: refusal(stream))
    }

    func closed(_ stream: BenchStream, errorCode: UInt32) {}

    /// Words for a stream's end.
    func describeClose(_ stream: BenchStream, errorCode: UInt32) -> String {
        if let reason = stream.closeReason { return reason }
        if stream.status != 200 && stream.status != 0 { return refusal(stream) }
        if errorCode == BenchStream.connectionLost { return "connection to the relay lost" }
        if errorCode == 0 { return "stream ended early" }
        return "stream reset by the relay (\(String(cString: nghttp2_http2_strerror(errorCode))))"
    }
}
