import HTTP2

/// What a connection's first bytes ask for. Protocol detection happens here and nowhere else:
/// the coming front ends (a SPDY/3.1 upgrade, a WebSocket upgrade, plain API requests) are new
/// cases of `FrontEnd.detect` and of `Handshake.Decision`.
public enum FrontEnd: Equatable, Sendable {
    /// HTTP/1.1 `Upgrade: h2c` with its `HTTP2-Settings` payload (decoded).
    case h2c(settings: [UInt8])
    /// Anything this relay does not speak (yet).
    case unsupported

    public static func detect(_ request: RequestHead) -> FrontEnd {
        if request.asksForH2C, let settings = request.header("http2-settings").flatMap(Base64URL.decode) {
            return .h2c(settings: settings)
        }
        return .unsupported
    }
}

/// The relay's side of a connection's first bytes, as a value: bytes in, a decision out. The
/// HTTP/2 preface (prior knowledge), or an HTTP/1.1 request that asks to upgrade, checked in a
/// fixed order (head, framing, body size, target, protocol, body). No I/O: the executor
/// (`PendingConnection`) reads, writes what the decision says, and starts the session.
public struct Handshake {
    public struct Limits: Sendable {
        /// The request head, however it arrives (`--max-request-head`).
        public var maxHead: Int
        /// An upgrade request's body: it becomes stream 1's first bytes, so at most a stream window.
        public var maxBody: Int

        public init(maxHead: Int, maxBody: Int) {
            self.maxHead = maxHead
            self.maxBody = maxBody
        }
    }

    /// An upgrade request, complete with its body.
    public struct Upgrade {
        public var request: RequestHead
        public var frontEnd: FrontEnd
        public var body: [UInt8]
    }

    public enum Decision {
        /// Read more.
        case needMore
        /// Answer `100 Continue` (the client holds its body back until then), then read more.
        case sendContinue
        case refuse(Refusal)
        /// The HTTP/2 preface: the bytes so far are the session's first.
        case priorKnowledge(initial: ArraySlice<UInt8>)
        /// An upgrade; `initial` are the bytes after the request and its body.
        case upgrade(Upgrade, initial: ArraySlice<UInt8>)
    }

    public let limits: Limits
    /// Where a request's target leads: nil when it names a pod here, else the refusal.
    private let resolve: (String) -> Refusal?
    public private(set) var bytes: [UInt8] = []
    private var head: RequestHead?
    private var scanned = 0
    private var continued = false
    public private(set) var decided = false

    public init(limits: Limits, resolve: @escaping (String) -> Refusal?) {
        self.limits = limits
        self.resolve = resolve
    }

    /// The next bytes read from the connection.
    public mutating func receive(_ more: UnsafeRawBufferPointer) -> Decision {
        bytes.append(contentsOf: more)
        return decide()
    }

    /// No complete request (or preface) within the handshake timeout.
    public mutating func timedOut(after seconds: Double) -> Decision {
        finish(.refuse(.handshakeTimeout(seconds: seconds)))
    }

    private mutating func finish(_ decision: Decision) -> Decision {
        switch decision {
        case .needMore, .sendContinue: break
        default: decided = true
        }
        return decision
    }

    private mutating func decide() -> Decision {
        let preface = HTTPText.clientPrefacePrefix
        if head == nil {
            let prefix = min(bytes.count, preface.count)
            if bytes[..<prefix].elementsEqual(preface[..<prefix]) {
                if bytes.count < preface.count { return .needMore }
                return finish(.priorKnowledge(initial: bytes[...]))
            }
            let headLimits = HeadLimits(maxBytes: limits.maxHead)
            switch bytes.withUnsafeBytes({ RequestHead.parse($0, limits: headLimits, scannedBefore: scanned) }) {
            case .incomplete(let upTo):
                scanned = upTo
                return .needMore
            case .invalid(let status, let reason):
                return finish(.refuse(Refusal(invalidHead: status, reason: reason)))
            case .complete(let request):
                head = request
            }
        }
        guard let request = head else { return .needMore }
        if request.header("transfer-encoding") != nil {
            return finish(.refuse(.lengthRequired))
        }
        let bodyLength = request.contentLength
        if bodyLength > limits.maxBody {
            return finish(.refuse(.bodyTooLarge(limit: limits.maxBody)))
        }
        if request.target != "*", let refusal = resolve(request.target) {
            return finish(.refuse(refusal))
        }
        let frontEnd = FrontEnd.detect(request)
        if frontEnd == .unsupported {
            return finish(.refuse(.upgradeRequired))
        }
        if bytes.count < request.length + bodyLength {
            // curl holds back a large body until it is told to go on.
            if !continued, request.header("expect")?.lowercased() == "100-continue" {
                continued = true
                return .sendContinue
            }
            return .needMore
        }
        let body = Array(bytes[request.length..<(request.length + bodyLength)])
        return finish(.upgrade(Upgrade(request: request, frontEnd: frontEnd, body: body),
                               initial: bytes[(request.length + bodyLength)...]))
    }
}
