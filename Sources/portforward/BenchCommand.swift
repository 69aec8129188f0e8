import ArgumentParser
import Bench
import PortForward
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

extension ScenarioKind: ExpressibleByArgument {}
extension Direction: ExpressibleByArgument {}
extension TargetMode: ExpressibleByArgument {}

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure a relay's throughput, stream fan-out and latency, speaking its protocol directly.",
        discussion: """
        Scenarios:
          throughput  S streams (default 1) moving bulk data for T seconds: upload (to the pod's discard \
        port), download (from its source port) or both (through its echo port); Gbit/s.
          fanout      K streams (default 10,000) opened W at a time (default 100), each verified by an \
        echo, held, echoed again, closed; then T seconds of churn (open, echo, close; W in flight).
          rr          request/response of --size bytes on S streams: round trips/s and latency.
          connrate    plain TCP to --target HOST:PORT (any echo server, e.g. a `portforward forward` \
        port): connect, echo, close, --concurrency at a time.

        Where the streams go: with --spawn-pod (the default without --server), the bench starts its \
        own target server (echo, discard and source) in a new network namespace (root; the host \
        network otherwise) and a relay that knows it as pod bench/target. With --server URL \
        --pod NS/NAME --port N it uses an existing relay and any echo server the pod runs.

        The table goes to stdout, a live progress line to stderr; --json FILE writes every figure \
        with the environment. Exit status 0 when every stream behaved, 2 when some did not, 1 on \
        errors. Examples:
          portforward bench throughput -d both -s 8 -t 5
          portforward bench fanout --streams 10000 --json fanout.json
          portforward bench rr --server http://127.0.0.1:10250 --pod default/web --port 7
          portforward bench fanout --server http://127.0.0.1:6443 --pod default/a,default/b --port 7 (round robin)
          portforward bench --serve echo --port 7000
        """)

    @Argument(help: "throughput, fanout, rr or connrate.")
    var scenario: ScenarioKind?

    // Where to.
    @Flag(help: "Start a target server in a new network namespace and a relay for it (default without --server).")
    var spawnPod = false

    @Option(help: "An existing relay's URL (then --pod and --port are needed).")
    var server: String?

    @Option(help: "The pod on that relay, NAMESPACE/NAME; several (repeated, or a comma list): streams round robin over them.")
    var pod: [String] = []

    @Option(help: "Go through the API server's path for this node (/proxy/nodes/NODE/portForward/...).")
    var node: String?

    @Option(help: "The pod's echo port (with --serve: the port to listen on, 0 for a free one).")
    var port: Int?

    @Option(help: "The pod's discard port for upload (default: the echo port).")
    var discardPort: Int?

    @Option(help: "The pod's source port for download (default: the echo port).")
    var sourcePort: Int?

    @Option(help: "connrate: the echo server, HOST:PORT.")
    var target: String?

    @Option(help: "Backend of the spawned relay (default: --io).")
    var relayIO: IOBackendChoice?

    @Option(help: "Connector of the spawned relay: native, or nsenter (the reference design).")
    var connector: ConnectorChoice = .native

    // How much.
    @Option(name: [.customShort("c"), .long], help: "HTTP/2 connections to the relay.")
    var connections = 1

    @Option(name: [.customShort("s"), .long], help: "Streams (throughput, rr: 1; fanout: 10000).")
    var streams: Int?

    @Option(name: [.customShort("d"), .long], help: "throughput: upload, download or both.")
    var direction: Direction = .both

    @Option(name: [.customShort("t"), .long], help: "Seconds to measure (fanout: of churn).")
    var duration = 5.0

    @Option(help: "Seconds of load before measuring (throughput, rr, connrate).")
    var warmup = 1.0

    @Option(help: "Message bytes for rr, fanout and connrate echoes (default 64, 16, 4).")
    var size: Int?

    @Option(name: [.customShort("P"), .customLong("concurrency")],
            help: "fanout: streams opening at once and churn cycles in flight (100); connrate: connections at once (1).")
    var concurrency: Int?

    @Option(help: "fanout: seconds to hold the streams before echoing on each again.")
    var hold = 1.0

    @Option(help: "fanout: report this process's resident memory (a relay or gateway the bench did not start).")
    var rssPid: Int32?

    @Option(help: "Seconds a phase (opening, closing) may take before the run fails.")
    var timeout = 60.0

    // Output.
    @Option(help: "Write every figure and the environment to this JSON file.")
    var json: String?

    @Flag(name: .shortAndLong, help: "No progress line.")
    var quiet = false

    @OptionGroup var io: IOOptions

    // Serving.
    @Option(help: "Run a target server instead: echo, discard, source, or all (PORT, PORT+1, PORT+2).")
    var serve: TargetMode?

    @Option(help: "With --serve: the address to listen on.")
    var listenAddress = "127.0.0.1"

    @Flag(help: .hidden)
    var watchStdin = false

    func validate() throws {
        if serve != nil {
            if scenario != nil { throw ValidationError("--serve runs a server; leave out the scenario") }
            return
        }
        guard let scenario else { throw ValidationError("name a scenario: throughput, fanout, rr or connrate (or --serve MODE)") }
        if connections < 1 { throw ValidationError("--connections must be at least 1") }
        if let streams, streams < 1 { throw ValidationError("--streams must be at least 1") }
        if duration < 0 || warmup < 0 || hold < 0 { throw ValidationError("durations cannot be negative") }
        if let size, !(1...(256 * 1024)).contains(size) { throw ValidationError("--size must be from 1 to 262144") }
        if let concurrency, concurrency < 1 { throw ValidationError("--concurrency must be at least 1") }
        if scenario == .connrate {
            if target == nil { throw ValidationError("connrate needs --target HOST:PORT (an echo server)") }
            return
        }
        if server != nil {
            if spawnPod { throw ValidationError("--spawn-pod starts its own relay: leave out --server") }
            guard RelayTarget.pods(parsing: pod) != nil else { throw ValidationError("--server needs --pod NAMESPACE/NAME (one or more)") }
            guard let port, (1...65535).contains(port) else { throw ValidationError("--server needs --port N (the pod's echo port)") }
        }
    }

    func run() throws {
        if let serve {
            do {
                try serveTarget(mode: serve, host: listenAddress, port: port ?? 7100, backend: io.backend,
                                watchStandardInput: watchStdin)
            } catch {
                fail("\(error)")
            }
            return
        }
        var options = BenchOptions()
        options.scenario = scenario!
        options.connections = connections
        options.streams = streams
        options.direction = direction
        options.duration = duration
        options.warmup = warmup
        options.size = size
        options.concurrency = concurrency
        options.hold = hold
        options.phaseTimeout = timeout
        options.quiet = quiet
        options.verbose = io.verbose

        let choice: TargetChoice
        do {
            if scenario == .connrate {
                let text = target!
                guard let colon = text.lastIndex(of: ":"), let number = Int(text[text.index(after: colon)...]) else {
                    throw ValidationError("invalid --target \"\(text)\": expected HOST:PORT")
                }
                var host = String(text[..<colon])
                if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
                choice = .plain(host: host, port: number)
            } else if let server {
                choice = .relay(RelayTarget(server: try ServerURL(parsing: server),
                                            paths: RelayTarget.pods(parsing: pod, node: node)!,
                                            echoPort: port!, discardPort: discardPort, sourcePort: sourcePort))
            } else {
                choice = .spawn(relayIO: relayIO ?? io.backend, serverIO: io.backend, connector: connector.rawValue,
                                copy: io.copy.rawValue)
            }
            let status = try runBench(options: options, target: choice, backend: io.backend, jsonPath: json, residentPID: rssPid)
            if status != 0 { throw ExitCode(status) }
        } catch let exit as ExitCode {
            throw exit
        } catch let error as ValidationError {
            throw error
        } catch {
            fail("\(error)")
        }
    }
}
