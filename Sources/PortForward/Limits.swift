import HTTP2
import Reactor

/// Every bound the relay puts on what a peer can make it do: each is a flag of `portforward relay`
/// (docs/PROTOCOL.md, "Limits", lists them with the reasons for the defaults).
public struct RelayLimits: Sendable {
    /// Connections at once (handshaking or in session); past it a new connection is closed at once.
    public var maxConnections = 4096
    /// Connections one peer address may have that are not past their handshake yet (the TLS
    /// handshake, then the first request; an HTTP/1.1 API connection between requests counts
    /// too): past it a new connection from that address is closed at once, so that one address
    /// holding half-open handshakes cannot take `maxConnections` from everyone else.
    public var maxHandshakesPerPeer = 128
    /// Streams being connected or forwarded across the whole relay; past it a stream gets `503`.
    public var maxStreams = 32_768
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams one connection may have open (fan-out is a
    /// feature: one client holding 10,000 streams must fit).
    public var maxStreamsPerConnection: UInt32 = 16_384
    /// The largest HTTP/2 header list (SETTINGS_MAX_HEADER_LIST_SIZE, enforced while decoding).
    public var maxHeaderListSize: UInt32 = 64 * 1024
    /// The largest HTTP/1.1 request head.
    public var maxRequestHead = 16 * 1024
    /// Bytes one connection's streams may hold (received and not yet written to a pod, or read
    /// from pods and not yet sent); past it the relay stops reading that connection and its pods.
    public var maxHeldBytesPerConnection = 256 << 20
    /// Frames nghttp2 may hold for a client that does not read them; past it the relay stops
    /// reading that connection.
    public var maxQueuedFrames = 4096
    /// A connection must send its preface, or its whole upgrade request, within this time (408);
    /// on a kept-alive API connection, each request and its answer within this time anew (a
    /// connection idle between requests is closed without a word).
    public var handshakeTimeout: Double = 10
    /// Kubernetes API requests one connection may make before the relay closes it (the answer to
    /// the last says `Connection: close`; clients open a new one). kubectl makes a handful per
    /// connection; the bound keeps one connection from living forever on the handshake path.
    public var maxAPIRequestsPerConnection = 100
    /// A session without a stream for this long is ended with GOAWAY (the kubelet's
    /// streaming-connection-idle-timeout is 4 h).
    public var idleTimeout: Double = 4 * 3600
    /// PING a client silent for `interval` seconds; end its session when no answer came in `timeout`.
    public var keepalive = Keepalive()
    /// Stream opens per client connection: `rate` per second, up to `burst` at once. Opens past
    /// it wait (they are not refused) until the bucket refills.
    public var streamOpenRate = TokenBucket.Setting(rate: 20_000, burst: 2_000)
    /// Stream opens per peer address, across its connections.
    public var peerStreamOpenRate = TokenBucket.Setting(rate: 40_000, burst: 4_000)
    /// RST_STREAM frames one connection may send (nghttp2's rapid-reset protection): `burst` at
    /// once, then `rate` a second; past it, GOAWAY.
    public var streamResets = TokenBucket.Setting(rate: 5_000, burst: 10_000)

    public init() {}

    /// The upgrade request's body is delivered as the first bytes of stream 1, outside HTTP/2
    /// flow control: it may be no larger than the stream window, the bound on any other stream.
    public func maxUpgradeBody(_ settings: SessionSettings) -> Int { Int(settings.streamWindow) }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up (rate 0: no limit).
public struct TokenBucket: Sendable {
    public struct Setting: Sendable {
        public var rate: Double
        public var burst: Double
        public init(rate: Double, burst: Double) {
            self.rate = rate
            self.burst = burst
        }
    }

    public let setting: Setting
    private var tokens: Double
    private var updated: UInt64

    public init(_ setting: Setting, now: UInt64 = Clock.nanoseconds()) {
        self.setting = setting
        tokens = setting.burst
        updated = now
    }

    private mutating func refill(_ now: UInt64) {
        if now > updated {
            tokens = min(setting.burst, tokens + Double(now - updated) * setting.rate / 1e9)
            updated = now
        }
    }

    public mutating func take(now: UInt64) {
        if setting.rate <= 0 { return }
        refill(now)
        tokens -= 1
    }

    /// Nanoseconds until the next token.
    public mutating func wait(now: UInt64) -> UInt64 {
        refill(now)
        if tokens >= 1 || setting.rate <= 0 { return 0 }
        return UInt64((1 - tokens) / setting.rate * 1e9) + 1
    }
}

/// Log lines at most `perSecond` a second; the rest are counted and reported in one line.
public final class LogLimiter {
    private let sink: (String) -> Void
    private let perSecond: Int
    private var windowStart: UInt64 = 0
    private var written = 0
    private var suppressed = 0

    public init(perSecond: Int = 20, sink: @escaping (String) -> Void) {
        self.perSecond = perSecond
        self.sink = sink
    }

    public func callAsFunction(_ line: @autoclosure () -> String) {
        let now = Clock.nanoseconds()
        if now - windowStart >= 1_000_000_000 {
            if suppressed > 0 { sink("(\(suppressed) more log lines suppressed)") }
            windowStart = now
            written = 0
            suppressed = 0
        }
        if written < perSecond {
            written += 1
            sink(line())
        } else {
            suppressed += 1
        }
    }
}
