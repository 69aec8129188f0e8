import HTTP2
import Reactor
import SPDY

/// The client's side of an `SPDYConnection` (`portforward forward --protocol spdy|websocket`), as
/// kubectl speaks it to a kubelet or an API server: per accepted local connection, an error stream
/// and a data stream (`streamtype`, `port`, `requestid`); the data stream carries the bytes as a
/// tunnel's `SPDYStream`. The error stream is ended from this side at once (kubectl's way); text
/// the server writes on it is that connection's failure, and ends only that connection (kubectl
/// 1.32 drops the whole session instead).
final class SPDYClientSession: SPDYConnection {
    /// Open pairs by their error stream: the data stream's carrier, and what the server wrote.
    private var errorStreams: [UInt32: (carrier: SPDYStream, text: [UInt8])] = [:]
    private var nextRequestID = 0
    /// Before the tunnels hear that the connection is gone (lines for the connections it ends).
    var onClosing: (() -> Void)?
    var onClosed: ((String?) -> Void)?

    /// The most of a failure's text kept (a line).
    static let maximumErrorText = 4096
    /// The most payload of one DATA frame to the server: an h2 frame's (`SessionSettings.maxFrameSize`),
    /// a pipe's worth. (256 KiB, the relay's toward kubectl, cost the client 4 splices and a writev
    /// per MiB instead of 1 and 1.)
    static let maxFramePayload = 1 << 20

    init(fd: FileDescriptor, reactor: ReactorBackend, pipes: PipePool?, overWebSocket: Bool, keepalive: Keepalive?,
         peer: String) throws {
        // The bounds of an h2 session of the client: a stream window per stream, 256 MiB in all.
        try super.init(fd: fd, peer: peer, reactor: reactor, pipes: overWebSocket ? nil : pipes, role: .client,
                       overWebSocket: overWebSocket, maxHeldBytes: RelayLimits().maxHeldBytesPerConnection,
                       streamBound: Int(SessionSettings().streamWindow), keepalive: keepalive, idleTimeout: 0,
                       maxFramePayload: Self.maxFramePayload)
    }

    /// Joins the accepted local socket `client` to pod port `port` through a new pair of streams.
    /// `onRejected` hears the server's failure text; `onFinish` when the tunnel is done.
    @discardableResult
    func forward(_ client: FileDescriptor, port: Int, onRejected: @escaping (Int, String) -> Void,
                 onFinish: @escaping (Tunnel) -> Void) throws -> Tunnel {
        let requestID = "\(nextRequestID)"
        nextRequestID += 1
        let errorStream = try session.openStream(headers: ["streamtype": "error", "port": "\(port)", "requestid": requestID])
        try session.finish(stream: errorStream)
        let dataStream: UInt32
        do {
            dataStream = try session.openStream(headers: ["streamtype": "data", "port": "\(port)", "requestid": requestID])
        } catch {
            session.reset(stream: errorStream, status: .cancel)
            throw error
        }
        let pair = PortForwardPairs.Pair(key: .requestID(requestID), port: UInt16(port), errorStream: errorStream,
                                         dataStream: dataStream)
        let carrier = SPDYStream(owner: self, pair: pair)
        carrier.errorEnded = true
        let tunnel = add(carrier, pipes: pipes)
        errorStreams[errorStream] = (carrier, [])
        tunnel.onRejected = onRejected
        tunnel.onFinish = { [unowned self] tunnel in
            self.finished(carrier)
            // The error stream ends when the server ends it (or the connection does).
            if !self.session.isOpen(errorStream) { self.errorStreams[errorStream] = nil }
            onFinish(tunnel)
        }
        tunnel.attach(client)
        flushSoon()
        return tunnel
    }

    // MARK: session events

    override func otherData(stream: UInt32, _ bytes: UnsafeRawBufferPointer) {
        guard var entry = errorStreams[stream], entry.text.count < Self.maximumErrorText else { return }
        entry.text.append(contentsOf: bytes.prefix(Self.maximumErrorText - entry.text.count))
        errorStreams[stream] = entry
    }

    /// The server ended the error stream: with text, the forward failed (the port refused, the pod
    /// gone...): that connection ends with the text as its one line; the session goes on.
    override func otherEnded(stream: UInt32) {
        guard let entry = errorStreams.removeValue(forKey: stream) else { return }
        let carrier = entry.carrier
        guard !entry.text.isEmpty, !carrier.closed, !carrier.tunnel.finished else { return }
        // As an h2 refusal reaches the tunnel: an error status, its text as the body, the end.
        carrier.tunnel.responded(status: 502)
        entry.text.withUnsafeBytes { received($0, on: carrier) }
        carrier.tunnel.peerEnded()
    }

    override func streamReset(_ stream: UInt32) {
        errorStreams[stream] = nil
    }

    override func willClose() {
        onClosing?()
        errorStreams.removeAll()
    }

    override func didClose(reason: String?) {
        onClosed?(reason)
    }

    /// Ctrl-C: GOAWAY (and the WebSocket's close), then the connection closes.
    func stop() {
        finish(reason: "stopping")
    }

    var isClosed: Bool { closed || closingReason != nil }
}
