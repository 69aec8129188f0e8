import Reactor

/// `throughput`: S streams moving bulk data for T seconds after a warm-up: upload (to the
/// pod's discard port), download (from its source port) or both (through its echo port).
final class ThroughputScenario: RelayScenario {
    private var streams: [BenchStream] = []
    private var answered = 0
    private var measuring = false
    private var startSent: UInt64 = 0, startReceived: UInt64 = 0, startTime = 0.0
    private var lastSent: UInt64 = 0, lastReceived: UInt64 = 0, lastTime = 0.0
    /// Per-second samples of the total rate during the measurement, for the spread.
    private var samples: [Double] = []
    private var sampleSent: UInt64 = 0, sampleReceived: UInt64 = 0, sampleTime = 0.0

    init(reactor: ReactorBackend, route: StreamRoute, options: BenchOptions) {
        let count = options.streamCount
        let title = "throughput: \(options.direction.rawValue), \(count) stream\(count == 1 ? "" : "s") "
            + "\(route.carriers(options)), "
            + "\(options.duration.fixed(1)) s after \(options.warmup.fixed(1)) s warm-up"
        super.init(reactor: reactor, route: route, options: options, title: title)
    }

    override func begin() {
        let port: Int
        switch options.direction {
        case .upload: port = ports.discard
        case .download: port = ports.source
        case .both: port = ports.echo
        }
        for slot in 0..<options.streamCount {
            let body: BenchStream.Body = options.direction == .download ? .messages : .endless
            let stream = BenchStream(slot: slot, body: body, connection: connection(for: slot), events: self, counters: counters)
            streams.append(stream)
            open(stream, port: port)
        }
        lastTime = now()
        // A relay that never answers must not hang the bench.
        reactor.after(options.phaseTimeout) { [weak self] in
            guard let self, !self.measuring, !self.finished else { return }
            self.fail("only \(self.answered) of \(self.streams.count) streams were answered within \(self.options.phaseTimeout.fixed(0)) s")
        }
    }

    override func responded(_ stream: BenchStream, status: Int) {
        super.responded(stream, status: status)
        guard status == 200 else { return }
        answered += 1
        if answered == streams.count {
            reactor.after(options.warmup) { [weak self] in self?.startMeasuring() }
        }
    }

    override func closed(_ stream: BenchStream, errorCode: UInt32) {
        if finished { return }
        fail("a stream ended during the run: \(describeClose(stream, errorCode: errorCode))")
    }

    private func startMeasuring() {
        guard !finished else { return }
        measuring = true
        startSent = counters.sent
        startReceived = counters.received
        startTime = now()
        sampleSent = startSent
        sampleReceived = startReceived
        sampleTime = startTime
        sample()
        reactor.after(options.duration) { [weak self] in self?.stopMeasuring() }
    }

    private func sample() {
        reactor.after(1.0) { [weak self] in
            guard let self, self.measuring, !self.finished else { return }
            let time = now()
            let bytes = (self.counters.sent - self.sampleSent) + (self.counters.received - self.sampleReceived)
            self.samples.append(gigabits(bytes, time - self.sampleTime))
            self.sampleSent = self.counters.sent
            self.sampleReceived = self.counters.received
            self.sampleTime = time
            self.sample()
        }
    }

    private func stopMeasuring() {
        guard !finished else { return }
        let elapsed = now() - startTime
        if now() - sampleTime >= 0.5 {
            let bytes = (counters.sent - sampleSent) + (counters.received - sampleReceived)
            samples.append(gigabits(bytes, now() - sampleTime))
        }
        let sent = counters.sent - startSent
        let received = counters.received - startReceived
        measuring = false
        let up = gigabits(sent, elapsed), down = gigabits(received, elapsed)
        switch options.direction {
        case .upload:
            result.row("upload", up.significant, "Gbit/s")
        case .download:
            result.row("download", down.significant, "Gbit/s")
        case .both:
            result.row("upload", up.significant, "Gbit/s")
            result.row("download", down.significant, "Gbit/s")
            result.row("total", (up + down).significant, "Gbit/s")
        }
        if samples.count > 1 {
            let sorted = samples.sorted()
            result.row("per second", "\(sorted.first!.significant)-\(sorted.last!.significant)", "Gbit/s total (min-max)")
        }
        result.figure("upload_gbps", options.direction == .download ? 0 : up)
        result.figure("download_gbps", options.direction == .upload ? 0 : down)
        result.figure("total_gbps", (options.direction == .upload ? 0 : down) + (options.direction == .download ? 0 : up))
        result.figure("upload_bytes", Int(sent))
        result.figure("download_bytes", Int(received))
        result.figure("seconds", elapsed)
        result.figure("samples_total_gbps", .array(samples.map { .number($0) }))
        finish()
    }

    override func progressText() -> String {
        let time = now()
        let interval = time - lastTime
        let up = gigabits(counters.sent - lastSent, interval), down = gigabits(counters.received - lastReceived, interval)
        lastSent = counters.sent
        lastReceived = counters.received
        lastTime = time
        let phase = measuring ? "measuring" : (answered < streams.count ? "opening \(answered)/\(streams.count)" : "warm-up")
        switch options.direction {
        case .upload: return "\(phase): upload \(up.significant) Gbit/s"
        case .download: return "\(phase): download \(down.significant) Gbit/s"
        case .both: return "\(phase): upload \(up.significant) Gbit/s, download \(down.significant) Gbit/s"
        }
    }
}
