// Micro benchmarks of the pieces on portforward's data path.
//
// - PortSpec parsing: the client's `[LOCAL:]REMOTE` arguments.
// - HTTP/2 frame-header encoding: an nghttp2 session producing 1-byte DATA frames into an
//   OutputQueue (so the cost is the frame header and the queue, not the payload).
// - One relayed chunk: 16 KiB of a stream's body through a client Session, the bytes handed to a
//   server Session, consumed there (as a relay does once they are written), and the
//   WINDOW_UPDATEs handed back. All in memory: the HTTP/2 work per chunk without system calls.
//   The malloc count per chunk is the figure to watch (the target is 0 in steady state).
// - Reactor no-op operations: deferred-task round trips (`schedule`) and zero-length timer
//   round trips, on each backend: what one loop turn costs with nothing to do.
import Benchmark
import HTTP2
import PortForward
import Reactor

#if canImport(Glibc)
import Glibc
#endif

// MARK: - HTTP/2 sessions in memory

/// A request body that always has `ready` bytes of the same memory to offer.
final class MemoryBody: DataSource {
    static let memory: UnsafeMutableRawPointer = {
        let bytes = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 64)
        bytes.initializeMemory(as: UInt8.self, repeating: 0x5A, count: 1 << 20)
        return bytes
    }()

    /// Bytes offered until the next `offer`.
    var ready = 0
    /// Frames are cut to at most this many bytes.
    var frameLimit = Int.max

    override func pendingBytes(limit: Int) -> (count: Int, endsBody: Bool) {
        (min(limit, ready, frameLimit), false)
    }

    override func takePayload(count: Int) -> Payload {
        ready -= count
        return .memory(UnsafeRawPointer(Self.memory))
    }

    override func payloadSent(count: Int) {}
}

/// The relay's side: every DATA byte is "written" at once, so its window opens again.
final class Sink: SessionDelegate {
    var received = 0
    func session(_ session: Session, headers: HeaderList, stream: StreamID, endStream: Bool) {}
    func session(_ session: Session, data: UnsafeRawBufferPointer, stream: StreamID) {
        received &+= data.count
        session.consume(stream, data.count)
    }
    func session(_ session: Session, endOfStream stream: StreamID) {}
    func session(_ session: Session, closed stream: StreamID, errorCode: UInt32) {}
}

/// A client and a server session joined in memory, with one open stream from the client.
final class SessionPair {
    let client: Session
    let server: Session
    let clientOut = OutputQueue()
    let serverOut = OutputQueue()
    let body = MemoryBody()
    let clientSink = Sink()
    let serverSink = Sink()
    let stream: StreamID

    init(window: Int32 = 1 << 20) throws {
        var settings = SessionSettings()
        settings.streamWindow = window
        settings.connectionWindow = max(window, 64 << 20)
        client = try Session(role: .client, settings: settings)
        server = try Session(role: .server, settings: settings)
        client.delegate = clientSink
        server.delegate = serverSink
        stream = try client.submitRequest([
            (":method", "POST"), (":scheme", "http"), (":authority", "127.0.0.1:10250"),
            (":path", "/portForward/default/web"), ("port", "8080"),
        ], body: body)
        // Prefaces, SETTINGS and their ACKs, HEADERS.
        for _ in 0..<3 {
            try Self.pump(client, into: clientOut, to: server)
            try Self.pump(server, into: serverOut, to: client)
        }
    }

    /// Moves everything `from` has to say into `to`, straight from the queue's iovecs.
    @inline(__always)
    static func pump(_ from: Session, into queue: OutputQueue, to: Session) throws {
        try from.produce(into: queue, limit: 4 << 20)
        while !queue.isEmpty {
            let next = queue.nextWrite()
            var moved = 0
            for index in 0..<next.vectorCount {
                let vector = queue.vectors[index]
                try to.receive(UnsafeRawBufferPointer(start: vector.iov_base, count: vector.iov_len))
                moved += vector.iov_len
            }
            queue.advance(moved)
        }
    }

    /// One chunk of `count` bytes from the client's stream to the server, and the window back.
    @inline(__always)
    func relay(_ count: Int) throws {
        body.ready = count
        client.resume(stream)
        try Self.pump(client, into: clientOut, to: server)
        try Self.pump(server, into: serverOut, to: client)
    }

    /// One DATA frame of `count` bytes produced and dropped (never delivered).
    @inline(__always)
    func encodeOnly(_ count: Int) throws {
        body.ready = count
        client.resume(stream)
        try client.produce(into: clientOut, limit: 1 << 20)
        clientOut.advance(clientOut.queuedBytes)
    }
}

// MARK: - Reactor no-ops

/// Re-schedules itself (or re-arms a zero timer) `target` times, then stops the loop.
final class Bouncer: DeferredTask, CompletionHandler {
    let reactor: ReactorBackend
    var left = 0
    init(_ reactor: ReactorBackend) { self.reactor = reactor }

    func runDeferred() {
        left -= 1
        if left <= 0 { reactor.stop() } else { reactor.schedule(self) }
    }

    func complete(_ completion: Completion) {
        left -= 1
        if left <= 0 { reactor.stop() } else { _ = reactor.timer(nanoseconds: 0, handler: self, tag: 0) }
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal, .peakMemoryResident],
        warmupIterations: 3,
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 1_000
    )

    Benchmark("PortSpec parsing (6000:5000)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try? PortSpec(parsing: "6000:5000"))
        }
    }

    Benchmark("PortSpec parseAll (4 specs)") { benchmark in
        let specs = ["8080", "6000:5000", ":9090", "0:7000"]
        for _ in benchmark.scaledIterations {
            blackHole(try? PortSpec.parseAll(specs))
        }
    }

    // 1-byte DATA frames, so the cost is the 9-byte header nghttp2 writes and the queue.
    Benchmark("HTTP2 DATA frame header encoding (1-byte frames)") { benchmark in
        let pair = try SessionPair(window: Int32.max)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try pair.encodeOnly(1)
        }
    }

    Benchmark("HTTP2 relayed chunk in memory (16 KiB, client -> server + WINDOW_UPDATE)",
              configuration: .init(scalingFactor: .kilo)) { benchmark in
        let pair = try SessionPair()
        // Steady state first: the first chunks grow queues and nghttp2's item pools.
        for _ in 0..<1_000 { try pair.relay(16 << 10) }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try pair.relay(16 << 10)
        }
        benchmark.stopMeasurement()
        blackHole(pair.serverSink.received)
    }

    Benchmark("HTTP2 relayed chunk in memory (128 KiB in 16 KiB frames)",
              configuration: .init(scalingFactor: .one)) { benchmark in
        let pair = try SessionPair()
        pair.body.frameLimit = 16 << 10
        for _ in 0..<200 { try pair.relay(128 << 10) }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            try pair.relay(128 << 10)
        }
        benchmark.stopMeasurement()
        blackHole(pair.serverSink.received)
    }

    for choice in [IOBackendChoice.epoll, .uring] {
        guard let reactor = try? Reactors.make(choice) else { continue }
        let bouncer = Bouncer(reactor)

        Benchmark("Reactor schedule round trip (\(reactor.name))") { benchmark in
            bouncer.left = benchmark.scaledIterations.count
            reactor.schedule(bouncer)
            benchmark.startMeasurement()
            try reactor.run()
        }

        Benchmark("Reactor zero timer round trip (\(reactor.name))") { benchmark in
            bouncer.left = benchmark.scaledIterations.count
            _ = reactor.timer(nanoseconds: 0, handler: bouncer, tag: 0)
            benchmark.startMeasurement()
            try reactor.run()
        }
    }
}
