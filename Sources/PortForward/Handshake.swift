import HTTP2

/// What a connection's first bytes ask for. Protocol detection happens here and nowhere else:
/// the coming front ends (a SPDY/3.1 upgrade, a WebSocket upgrade) are new cases of
/// `FrontEnd.detect` and of `Handshake.Decision`.
public enum FrontEnd: Equatable, Sendable {
    /// HTTP/1.1 `Upgrade: h2c` with its `HTTP2-Settings` payload (decoded).
    case h2c(settings: [UInt8])
    /// A request to the Kubernetes API (`/version`, `/api...`, `/apis...`) that is not an h2c
    /// upgrade: answered by `KubernetesAPI`, and the connection kept for the next request. An
    /// upgrade to a protocol we do not speak on `/api/v1/.../portforward` is one too: the API
    /// answers it with a `Status` kubectl understands.
    case api
    /// kubectl's plain SPDY/3.1 upgrade (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version:
    /// portforward.k8s.io`) on a port-forward path.
    case spdy
    /// kubectl 1.31+'s default: the same SPDY/3.1 inside a WebSocket (`Upgrade: websocket`,
    /// `Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io`) on a port-forward path.
    case spdyOverWebSocket
    /// The WebSocket channel protocol of the official client libraries (`v4.channel.k8s.io`,
    /// `v4.base64.channel.k8s.io`, with `?ports=`) on a port-forward path.
    case channel
    /// Anything this relay does not speak (yet).
    case unsupported

    public static func detect(_ request: RequestHead) -> FrontEnd {
        if request.asksForH2C, let settings = request.header("http2-settings").flatMap(Base64URL.decode) {
            return .h2c(settings: settings)
        }
        if request.fields.lists("upgrade", "spdy/3.1"), request.fields.lists("x-stream-protocol-version", "portforward.k8s.io"),
           ForwardPath(parsing: request.target) != nil {
            return .spdy
        }
        if request.fields.lists("upgrade", "websocket"), request.fields.lists("sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io"),
           ForwardPath(parsing: request.target) != nil {
            return .spdyOverWebSocket
        }
        if request.fields.lists("upgrade", "websocket"), ForwardPath(parsing: request.target) != nil,
           request.fields.lists("sec-websocket-protocol", "v4.channel.k8s.io")
            || request.fields.lists("sec-websocket-protocol", "v4.base64.channel.k8s.io") {
            return .channel
        }
        if KubernetesAPI.serves(request.target) { return .api }
        return .unsupported
    }
}

/// The relay's side of a connection's first bytes, as a value: bytes in, a decision out. The
/// HTTP/2 preface (prior knowledge), an HTTP/1.1 request that asks to upgrade, or plain
/// Kubernetes API requests one after another on a kept-alive connection (kubectl reads the pod
/// before it port-forwards), each checked in a fixed order (head, framing, body size, protocol,
/// target, body). No I/O: the executor (`PendingConnection`) reads, writes what the decision
/// says, and starts the session.
public struct Handshake {
    public struct Limits: Sendable {
        /// The request head, however it arrives (`--max-request-head`).
        public var maxHead: Int
        /// An upgrade request's body: it becomes stream 1's first bytes, so at most a stream window.
        public var maxBody: Int
        /// API requests one connection may make; the answer to the last says `Connection: close`
        /// (`--max-api-requests`).
        public var maxRequests: Int

        public init(maxHead: Int, maxBody: Int, maxRequests: Int = RelayLimits().maxAPIRequestsPerConnection) {
            self.maxHead = maxHead
            self.maxBody = maxBody
            self.maxRequests = maxRequests
        }
    }

    /// A complete API request (its body, if any, skipped), to be answered.
    public struct APIRequest {
        public var request: RequestHead
        /// Whether the connection stays open for another request after the answer.
        public var keepAlive: Bool
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
        /// Answer an API request; then, when it keeps the connection, `nextRequest()`.
        case serve(APIRequest)
        /// End the connection without an answer: it sat idle between two requests, and a
        /// client reusing it would take an unasked-for answer for its next request's.
        case close
    }

    public let limits: Limits
    /// Where a request's target leads: nil when it names a pod here, else the refusal.
    private let resolve: (String) -> Refusal?
    /// Whether the request may ask for its target (`Relay.authorizePortForward`): nil, or the
    /// 401 or 403. API requests are checked where they are answered instead.
    private let authorize: (RequestHead) -> Refusal?
    public private(set) var bytes: [UInt8] = []
    private var head: RequestHead?
    private var scanned = 0
    private var continued = false
    public private(set) var decided = false
    /// API requests answered on this connection so far.
    public private(set) var served = 0

    public init(limits: Limits, resolve: @escaping (String) -> Refusal?, authorize: @escaping (RequestHead) -> Refusal? = { _ in nil }) {
        self.limits = limits
        self.resolve = resolve
        self.authorize = authorize
    }

    /// The next bytes read from the connection.
    public mutating func receive(_ more: UnsafeRawBufferPointer) -> Decision {
        bytes.append(contentsOf: more)
        return decide()
    }

    /// No complete request (or preface) within the handshake timeout.
    public mutating func timedOut(after seconds: Double) -> Decision {
        if served > 0 && bytes.isEmpty { return finish(.close) }
        return finish(.refuse(.handshakeTimeout(seconds: seconds)))
    }

    /// After a `.serve` that keeps the connection: drops that request and decides on the bytes
    /// already read behind it (a pipelined request, or nothing yet).
    public mutating func nextRequest() -> Decision {
        guard let request = head, decided else { return .needMore }
        bytes.removeFirst(min(bytes.count, request.length + request.contentLength))
        head = nil
        scanned = 0
        continued = false
        decided = false
        if bytes.isEmpty { return .needMore }
        return decide()
    }

    private mutating func finish(_ decision: Decision) -> Decision {
        switch decision {
        case .needMore, .sendContinue: break
        case .serve: served += 1; decided = true
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
        let frontEnd = FrontEnd.detect(request)
        // Who asks comes before where it leads, as in kube-apiserver: 401 and 403 before 404.
        if frontEnd != .api, let refusal = authorize(request) {
            return finish(.refuse(refusal))
        }
        // An API path is the API's to answer, a missing pod included (as a `Status`).
        if frontEnd != .api, request.target != "*", let refusal = resolve(request.target) {
            return finish(.refuse(refusal))
        }
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
        if frontEnd == .api {
            return finish(.serve(APIRequest(request: request, keepAlive: keepsAlive(request))))
        }
        let body = Array(bytes[request.length..<(request.length + bodyLength)])
        return finish(.upgrade(Upgrade(request: request, frontEnd: frontEnd, body: body),
                               initial: bytes[(request.length + bodyLength)...]))
    }

    /// RFC 9112 section 9.3: HTTP/1.1 keeps the connection unless `Connection: close`; 1.0 closes
    /// unless `Connection: keep-alive`. A refused upgrade closes too: its client discards the
    /// connection, and may have sent bytes of the protocol it hoped for behind the request.
    private func keepsAlive(_ request: RequestHead) -> Bool {
        if served + 1 >= limits.maxRequests || request.header("upgrade") != nil { return false }
        if request.fields.lists("connection", "close") { return false }
        return request.version == "HTTP/1.1" || request.fields.lists("connection", "keep-alive")
    }
}
