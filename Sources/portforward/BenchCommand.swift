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
        abstract: "Measure the port-forward path: a relay spoken to directly, or any server through portforward forward.",
        discussion: """
        Scenarios:
          throughput  S streams (default 1) moving bulk data for T seconds: upload (to the pod's discard \
        port), download (from its source port) or both (through its echo port); Gbit/s.
          fanout      K streams (default 10,000) opened W at a time (default 100), each verified by an \
        echo, held, echoed again, closed; then T seconds of churn (open, echo, close; W in flight).
          rr          request/response of --size bytes on S streams: round trips/s and latency.
          connrate    connect, echo, close, --concurrency at a time: through a pod argument's forward \
        client, or plain TCP to --target HOST:PORT (any echo server).

        Where the streams go:
          POD (NAME or pod/NAME, as kubectl and `portforward forward` take it) with --port N: the \
        bench starts `portforward forward` (this executable) with the same kubeconfig, server, \
        credential, TLS and --protocol options, listening on free ports of 127.0.0.1, and runs the \
        scenario as plain TCP connections through it (a stream is a connection). That measures the \
        whole path a user's forward takes: our client (a process of its own, on another core) and \
        the API server and kubelet, or our relay or gateway, over h2, websocket or spdy.
          --server URL --pod NS/NAME --port N: an existing relay, spoken to directly over h2c (no \
        client in between: the relay alone).
          --spawn-pod (the default without either): the bench starts its own target server (echo, \
        discard and source) in a new network namespace (root; the host network otherwise) and a \
        relay that knows it as pod bench/target, and speaks h2c to it.

        The table goes to stdout, a live progress line to stderr; --json FILE writes every figure \
        with the environment (and, through a forward client, the protocol and server measured). \
        Exit status 0 when every stream behaved, 2 when some did not, 1 on errors. Examples:
          portforward bench throughput -d both -s 8 -t 5
          portforward bench throughput pod/web --port 7 --kubeconfig ~/.kube/config --protocol websocket
          portforward bench rr web -n default --port 7 --protocol spdy
          portforward bench fanout --streams 10000 --json fanout.json
          portforward bench rr --server http://127.0.0.1:10250 --pod default/web --port 7
          portforward bench fanout --server http://127.0.0.1:6443 --pod default/a,default/b --port 7 (round robin)
          portforward bench --serve echo --port 7000
        """)

    @Argument(help: "throughput, fanout, rr or connrate.")
    var scenario: ScenarioKind?

    @Argument(help: ArgumentHelp("The pod, NAME or pod/NAME: the streams go through a portforward forward the bench starts.",
                                 valueName: "pod"))
    var podArgument: String?

    // Where to.
    @Flag(help: "Start a target server in a new network namespace and a relay for it (default without --server).")
    var spawnPod = false

    @Option(help: "Without a pod argument: the pod on the --server relay, NAMESPACE/NAME, spoken to over h2c; several (repeated, or a comma list): streams round robin over them.")
    var pod: [String] = []

    @OptionGroup(title: "Server, credentials, TLS, protocol (with a pod argument: for portforward forward)")
    var kube: ClusterOptions

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
        if spawnPod && (podArgument != nil || !kube.clientOnlyFlags.isEmpty || kube.server != nil) {
            let given = (podArgument != nil ? ["a pod argument"] : []) + kube.clientOnlyFlags + (kube.server != nil ? ["--server"] : [])
            throw ValidationError("--spawn-pod starts its own relay and speaks h2c to it: leave out \(given.joined(separator: ", "))")
        }
        for (name, value) in [("--port", port), ("--discard-port", discardPort), ("--source-port", sourcePort)] {
            if let value, !(1...65535).contains(value) { throw ValidationError("\(name) must be from 1 to 65535") }
        }
        if let podArgument {
            do { _ = try PodArgument.name(podArgument) } catch { throw ValidationError("\(error)") }
            if !pod.isEmpty {
                throw ValidationError("--pod NAMESPACE/NAME is a pod on a relay spoken to over h2c, a pod argument one reached through portforward forward: give one")
            }
            if target != nil { throw ValidationError("--target and a pod argument name two echo servers: give one") }
            if connections != 1 {
                throw ValidationError("--connections counts HTTP/2 connections to a relay: through portforward forward each stream is a TCP connection of its own")
            }
            if relayIO != nil { throw ValidationError("--relay-io is for --spawn-pod's relay") }
            if port == nil { throw ValidationError("a pod argument needs --port N (the pod's echo port)") }
            return
        }
        if !pod.isEmpty && kube.server == nil {
            throw ValidationError("--pod NAMESPACE/NAME needs --server URL (a relay spoken to over h2c); for a pod through portforward forward, give it as an argument")
        }
        if !kube.clientOnlyFlags.isEmpty {
            throw ValidationError("\(kube.clientOnlyFlags.joined(separator: ", ")) go\(kube.clientOnlyFlags.count == 1 ? "es" : "") with a pod argument (NAME or pod/NAME): the bench then runs portforward forward with \(kube.clientOnlyFlags.count == 1 ? "it" : "them")")
        }
        if scenario == .connrate {
            if target == nil { throw ValidationError("connrate needs --target HOST:PORT (an echo server) or a pod argument") }
            return
        }
        if kube.server != nil {
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
            if let podArgument {
                // For the report: where the forward client goes, as it will resolve it.
                let selection = try? kube.selection()
                choice = .forward(ForwardRequest(arguments: kube.arguments, token: kube.token, pod: podArgument, echoPort: port!,
                                                 discardPort: discardPort, sourcePort: sourcePort,
                                                 wireProtocol: kube.wireProtocol, server: kube.serverURL(selection ?? nil),
                                                 copy: io.copy.rawValue))
            } else if scenario == .connrate {
                let text = target!
                guard let colon = text.lastIndex(of: ":"), let number = Int(text[text.index(after: colon)...]) else {
                    throw ValidationError("invalid --target \"\(text)\": expected HOST:PORT")
                }
                var host = String(text[..<colon])
                if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
                choice = .plain(host: host, port: number)
            } else if let server = kube.server {
                choice = .relay(RelayTarget(server: try ServerURL(parsing: server),
                                            paths: RelayTarget.pods(parsing: pod, node: kube.node)!,
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
