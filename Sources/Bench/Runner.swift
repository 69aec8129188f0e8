import CLinuxShim
import PortForward
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Where the streams of a run go.
public enum TargetChoice: Sendable {
    /// An existing relay, a pod it knows, and the pod's echo port (and optional discard and
    /// source ports; the echo port serves for them otherwise).
    case relay(RelayTarget)
    /// `--spawn-pod`: a network namespace with the bench's target server, and a relay.
    case spawn(relayIO: IOBackendChoice, serverIO: IOBackendChoice, connector: String, copy: String)
    /// connrate: any TCP echo server.
    case plain(host: String, port: Int)
    /// A pod as a user reaches it: through a `portforward forward` child (any server it can
    /// reach, any protocol), plain TCP to its local ports.
    case forward(ForwardRequest)
}

/// Runs one bench scenario: sets up what it needs, runs it, prints the table on stdout and
/// writes the JSON file. Returns the exit status (0: ran and every stream behaved).
/// `residentPID`: a relay (or gateway) the bench did not start, whose resident memory the fanout
/// report gives before the streams and while they are held (`--rss-pid`).
public func runBench(options: BenchOptions, target: TargetChoice, backend: IOBackendChoice, jsonPath: String?,
                     residentPID: Int32? = nil) throws -> Int32 {
    Process.ignoreBrokenPipes()
    let limits = Process.raiseOpenFileLimit()
    let reactor = try Reactors.make(backend)
    var spawned: SpawnedPod?
    defer { spawned?.stop() }
    var client: ForwardClient?
    defer { client?.stop() }

    var relayTarget: RelayTarget?
    var setup: [(String, JSON)] = []
    var relayBackend: String?
    var connector: String?
    var relayCopy: String?
    switch target {
    case .relay(let given):
        relayTarget = given
        setup.append(("relay", .string(given.server.authority)))
        setup.append(("pod", .string(given.paths.map { "\($0.namespace)/\($0.pod)" }.joined(separator: ","))))
        setup.append(("spawned", .bool(false)))
    case .spawn(let relayIO, let serverIO, let chosen, let copy):
        blockStopSignals()
        if !options.quiet { standardError("bench: starting a pod (target server) and a relay ...") }
        let pod = try SpawnedPod(relayIO: relayIO, serverIO: serverIO, connector: chosen, copy: copy,
                                 verbose: options.verbose)
        spawned = pod
        for note in pod.notes { standardError("bench: \(note)") }
        relayTarget = pod.target
        relayBackend = relayBackendName(pod.relayLine)
        connector = chosen
        relayCopy = copy
        if options.verbose {
            standardError("bench: \(pod.relayLine)")
            standardError("bench: \(pod.targetLine)")
        }
        setup.append(("relay", .string(pod.target.server.authority)))
        setup.append(("pod", .string("bench/target")))
        setup.append(("spawned", .bool(true)))
        setup.append(("network_namespace", pod.namespace.map { .string($0) } ?? .null))
    case .plain(let host, let port):
        setup.append(("target", .string("\(host):\(port)")))
    case .forward(let request):
        blockStopSignals()
        if !options.quiet { standardError("bench: starting portforward forward \(request.pod) (\(request.remotePorts.map { ":\($0)" }.joined(separator: " "))) ...") }
        client = try ForwardClient(request, io: backend, copy: request.copy, timeout: options.phaseTimeout)
        setup.append(("client", .string("portforward forward")))
        setup.append(("pod", .string(request.pod)))
        setup.append(("spawned", .bool(false)))
    }
    if options.streamCount > Int(limits.soft) - 64 && options.scenario == .fanout {
        standardError("bench: warning: \(options.streamCount) streams with an open-file limit of \(limits.soft)")
    }

    /// The scenario, run.
    func measure() throws -> BenchResult {
        switch options.scenario {
        case .connrate:
            let echo: (host: String, port: Int)?
            switch target {
            case .plain(let host, let port): echo = (host, port)
            case .forward: echo = client.map { ($0.ports.host, $0.ports.echo) }
            default: echo = nil
            }
            guard let echo, let address = SocketAddress.resolve(echo.host, port: echo.port).first else {
                throw BenchError("connrate needs --target HOST:PORT (an echo server) or a pod")
            }
            return try ConnectionRateScenario(reactor: reactor, address: address, options: options).run()
        case .throughput, .fanout, .rr:
            let route: StreamRoute
            if let client {
                route = .local(client.ports)
            } else if let relayTarget {
                route = .relay(relayTarget)
            } else {
                throw BenchError("\(options.scenario.rawValue) needs a relay: --server URL --pod NS/NAME --port N, or --spawn-pod")
            }
            let scenario: RelayScenario
            switch options.scenario {
            case .throughput: scenario = ThroughputScenario(reactor: reactor, route: route, options: options)
            case .fanout: scenario = FanoutScenario(reactor: reactor, route: route, options: options)
            default: scenario = RequestResponseScenario(reactor: reactor, route: route, options: options)
            }
            if let pod = spawned { scenario.relayResidentKiB = { pod.relayResidentKiB } }
            if let residentPID { scenario.relayResidentKiB = { Child.residentKiB(pid: residentPID) } }
            return try scenario.run()
        }
    }

    var result: BenchResult
    do {
        result = try measure()
    } catch let error as BenchError where error.description == "interrupted" {
        throw error
    } catch {
        // The child's side of it (a lost session, its exit) is in its log, which stop() would
        // delete: fold it into the one line, and keep the log.
        guard let client else { throw error }
        throw BenchError("\(error); \(client.explainFailure())")
    }
    var through = ""
    if let client {
        let path = ForwardReport.describe(client)
        through = "through \(path.text), "
        setup += path.setup
        if let ended = client.ended { result.problems.append("portforward forward exited during the run (\(ended))") }
        if !result.problems.isEmpty { result.problems.append(client.explainFailure(mentioningExit: false)) }
    }
    var table = result.table
    table += "\n  (\(through)bench io \(reactor.name)" + (relayBackend.map { ", relay io \($0)" } ?? "")
        + (connector.map { ", connector \($0)" } ?? "") + (relayCopy.map { ", copy \($0)" } ?? "") + ", kernel \(BenchEnvironment.kernel), \(BenchEnvironment.cores) cores)"
    print(table)
    fflush(stdout)

    if let jsonPath {
        // Through a forward client each stream is a TCP connection of its own: no shared ones.
        var parameters: [(String, JSON)] = client == nil ? [("connections", .integer(options.connections))] : []
        parameters += [
            ("streams", .integer(options.streamCount)),
            ("duration_s", .number(options.duration)),
            ("warmup_s", .number(options.warmup)),
        ]
        switch options.scenario {
        case .throughput: parameters.append(("direction", .string(options.direction.rawValue)))
        case .fanout, .rr, .connrate:
            parameters.append(("message_bytes", .integer(options.messageSize)))
            parameters.append(("concurrency", .integer(options.concurrency ?? (options.scenario == .fanout ? 100 : 1))))
        }
        if options.scenario == .fanout { parameters.append(("hold_s", .number(options.hold))) }
        let document = JSON.object([
            ("tool", .string("portforward bench")),
            ("scenario", .string(result.scenario)),
            ("title", .string(result.title)),
            ("parameters", .object(parameters)),
            ("setup", .object(setup)),
            ("environment", BenchEnvironment.json(benchBackend: reactor.name, relayBackend: relayBackend,
                                                  relayCopy: relayCopy, connector: connector)),
            ("results", .object(result.figures)),
            ("problems", .array(result.problems.map { .string($0) })),
        ])
        try writeFile(jsonPath, document.serialized() + "\n")
    }
    return result.problems.isEmpty ? 0 : 2
}

/// Blocks the bench's stop signals from here on, so that Ctrl-C during set-up still gets to
/// clean up (the scenario's signalfd takes them).
private func blockStopSignals() {
    var blocked = benchStopSignals
    _ = pf_block_signals(&blocked, Int32(blocked.count))
}

/// What the report says about the forward client: the protocol asked for and the one its
/// session speaks, the server, and its backend.
private enum ForwardReport {
    static func describe(_ client: ForwardClient) -> (text: String, setup: [(String, JSON)]) {
        let request = client.request
        let sessions = client.sessions()
        // "https://127.0.0.1:6443: SPDY/3.1 in a WebSocket"
        var server = request.server
        var spoken: String?
        var measured: WireProtocol?
        if let first = sessions.first, let found = WireProtocol.allCases.first(where: { first.hasSuffix(": " + $0.name) }) {
            server = String(first.dropLast(found.name.count + 2))
            spoken = found.name
            measured = found
        }
        let asked = request.wireProtocol
        var text = "portforward forward --protocol \(asked.rawValue)"
        if let spoken { text += " (\(spoken))" }
        text += " to \(server)"
        var setup: [(String, JSON)] = [
            ("path", .string(text)),
            ("server", .string(server)),
            ("protocol", .string(measured?.rawValue ?? asked.rawValue)),
            ("protocol_asked", .string(asked.rawValue)),
            ("forward_sessions", .integer(sessions.count)),
        ]
        if let spoken { setup.append(("protocol_spoken", .string(spoken))) }
        if let backend = client.backend() {
            text += ", forward io \(backend)"
            setup.append(("forward_io", .string(backend)))
        }
        return (text, setup)
    }
}

/// `Relay listening on ... io io_uring, ...` -> "io_uring".
private func relayBackendName(_ line: String) -> String? {
    let words = line.split(whereSeparator: { $0 == " " || $0 == "," || $0 == ")" })
    guard let index = words.firstIndex(of: "io"), index + 1 < words.count else { return nil }
    return String(words[index + 1])
}
