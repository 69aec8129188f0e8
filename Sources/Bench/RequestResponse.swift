import Reactor

/// `rr`: S streams to the pod's echo port, each sending a small message and waiting for its
/// whole echo before the next; round trips per second and their latency, over T seconds after
/// a warm-up.
final class RequestResponseScenario: RelayScenario {
    private var streams: [BenchStream] = []
    private let size: Int
    private var answered = 0
    private var measuring = false
    private var roundTrips = 0
    private var latencies = Latencies()
    private var startTime = 0.0
    private var lastCount = 0, lastTime = 0.0

    init(reactor: ReactorBackend, route: StreamRoute, options: BenchOptions) {
        size = max(1, options.messageSize)
        let count = options.streamCount
        let title = "rr: \(size)-byte request/response on \(count) stream\(count == 1 ? "" : "s") "
            + "\(route.carriers(options)), "
            + "\(options.duration.fixed(1)) s after \(options.warmup.fixed(1)) s warm-up"
        super.init(reactor: reactor, route: route, options: options, title: title)
    }

    override func begin() {
        for slot in 0..<options.streamCount {
            let stream = BenchStream(slot: slot, body: .messages, connection: connection(for: slot), events: self, counters: counters)
            streams.append(stream)
            open(stream, port: ports.echo)
        }
        lastTime = now()
        reactor.after(options.phaseTimeout) { [weak self] in
            guard let self, self.answered < self.streams.count, !self.finished else { return }
            self.fail("only \(self.answered) of \(self.streams.count) streams were answered within \(self.options.phaseTimeout.fixed(0)) s")
        }
    }

    override func responded(_ stream: BenchStream, status: Int) {
        super.responded(stream, status: status)
        guard status == 200 else { return }
        answered += 1
        stream.send(count: size)
        if answered == streams.count {
            reactor.after(options.warmup) { [weak self] in self?.startMeasuring() }
        }
    }

    private func startMeasuring() {
        guard !finished else { return }
        measuring = true
        startTime = now()
        lastTime = startTime
        lastCount = 0
        reactor.after(options.duration) { [weak self] in self?.report() }
    }

    override func received(_ stream: BenchStream, _ bytes: UnsafeRawBufferPointer) {
        super.received(stream, bytes)
        guard stream.status == 200 else { return }
        stream.check(bytes)
        guard stream.expected == 0, !finished else { return }
        if stream.mismatched { return fail("an echo did not match what was sent") }
        if measuring {
            roundTrips += 1
            latencies.record(Clock.nanoseconds() - stream.messageAt)
        }
        stream.send(count: size)
    }

    override func closed(_ stream: BenchStream, errorCode: UInt32) {
        if finished { return }
        fail("a stream ended during the run: \(describeClose(stream, errorCode: errorCode))")
    }

    private func report() {
        guard !finished else { return }
        let seconds = now() - startTime
        let rate = Double(roundTrips) / seconds
        result.row("round trips", rate.significant, "per second")
        latencies.report("rtt", label: "round trip", into: &result)
        result.figure("round_trips", roundTrips)
        result.figure("seconds", seconds)
        result.figure("round_trips_per_s", rate)
        finish()
    }

    override func progressText() -> String {
        let time = now()
        let rate = Double(roundTrips - lastCount) / max(time - lastTime, 1e-3)
        lastCount = roundTrips
        lastTime = time
        if !measuring { return answered < streams.count ? "opening \(answered)/\(streams.count)" : "warm-up" }
        return "\(rate.significant) round trips/s"
    }
}
