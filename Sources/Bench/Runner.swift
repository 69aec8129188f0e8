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
        // Signals stay blocked from here on, so Ctrl-C during set-up still gets to clean up.
        var blocked: [Int32] = [SIGINT, SIGTERM, SIGHUP]
        _ = pf_block_signals(&blocked, Int32(blocked.count))
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
    }
    if options.streamCount > Int(limits.soft) - 64 && options.scenario == .fanout {
        standardError("bench: warning: \(options.streamCount) streams with an open-file limit of \(limits.soft)")
    }

    let result: BenchResult
    switch options.scenario {
    case .connrate:
        guard case .plain(let host, let port) = target, let address = SocketAddress.resolve(host, port: port).first else {
            throw BenchError("connrate needs --target HOST:PORT (an echo server)")
        }
        result = try ConnectionRateScenario(reactor: reactor, address: address, options: options).run()
    case .throughput, .fanout, .rr:
        guard let relayTarget else { throw BenchError("\(options.scenario.rawValue) needs a relay: --server URL --pod NS/NAME --port N, or --spawn-pod") }
        let scenario: RelayScenario
        switch options.scenario {
        case .throughput: scenario = ThroughputScenario(reactor: reactor, target: relayTarget, options: options)
        case .fanout: scenario = FanoutScenario(reactor: reactor, target: relayTarget, options: options)
        default: scenario = RequestResponseScenario(reactor: reactor, target: relayTarget, options: options)
        }
        if let pod = spawned { scenario.relayResidentKiB = { pod.relayResidentKiB } }
        if let residentPID { scenario.relayResidentKiB = { Child.residentKiB(pid: residentPID) } }
        result = try scenario.run()
    }

    var table = result.table
    table += "\n  (bench io \(reactor.name)" + (relayBackend.map { ", relay io \($0)" } ?? "")
        + (connector.map { ", connector \($0)" } ?? "") + (relayCopy.map { ", copy \($0)" } ?? "") + ", kernel \(BenchEnvironment.kernel), \(BenchEnvironment.cores) cores)"
    print(table)
    fflush(stdout)

    if let jsonPath {
        var parameters: [(String, JSON)] = [
            ("connections", .integer(options.connections)),
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

/// `Relay listening on ... io io_uring, ...` -> "io_uring".
private func relayBackendName(_ line: String) -> String? {
    let words = line.split(whereSeparator: { $0 == " " || $0 == "," || $0 == ")" })
    guard let index = words.firstIndex(of: "io"), index + 1 < words.count else { return nil }
    return String(words[index + 1])
}
