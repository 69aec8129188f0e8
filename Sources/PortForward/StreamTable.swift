import HTTP2
import Reactor

/// The tunnels of one multiplexed connection by stream, and the routing of the connection's
/// stream events to them: the same for the client and the relay. A stream without a tunnel (one
/// answered with an error, or already finished) has its payload dropped and its window reopened.
public final class StreamTable: SessionDelegate, SpliceReceiver {
    private var streams: [StreamID: HTTP2Stream] = [:]
    /// A request (relay) or an answer's head (client); the owner decides what it means.
    public var onHeaders: ((HeaderList, StreamID, Bool) -> Void)?
    /// A stream without a tunnel (the client's own API reads): its payload, and its end (0: ended
    /// cleanly, else the reset code).
    public var onOtherData: ((StreamID, UnsafeRawBufferPointer) -> Void)?
    public var onOtherClosed: ((StreamID, UInt32) -> Void)?

    public init() {}

    public var count: Int { streams.count }
    public var isEmpty: Bool { streams.isEmpty }
    public subscript(_ id: StreamID) -> Tunnel? { streams[id]?.tunnel }

    /// Routes `connection`'s stream events here (both sides set their connections up this way).
    /// When the connection closes, every tunnel ends first, then `onClose` runs.
    public func serve(_ connection: Connection, pipes: PipePool?, onClose: @escaping (String?) -> Void) {
        connection.session.delegate = self
        connection.spliceReceiver = self
        connection.pipes = pipes
        connection.hasStreams = { [unowned self] in !self.isEmpty }
        connection.onClose = { [unowned self] reason in
            self.connectionLost()
            onClose(reason)
        }
    }

    /// `stream` carries `tunnel` until the tunnel finishes.
    public func add(_ stream: HTTP2Stream, _ tunnel: Tunnel, onFinish: ((Tunnel) -> Void)? = nil) {
        streams[stream.id] = stream
        let id = stream.id
        tunnel.onFinish = { [weak self, weak stream] finished in
            if let self, self.streams[id] === stream { self.streams[id] = nil }
            onFinish?(finished)
        }
    }

    /// Every tunnel, in no particular order (a copy: handling may remove them).
    public var tunnels: [Tunnel] { streams.values.compactMap(\.tunnel) }

    /// The connection is gone: every tunnel ends.
    public func connectionLost() {
        for tunnel in tunnels { tunnel.connectionLost() }
        streams.removeAll()
    }

    public func acceptsSplice(stream: StreamID) -> Bool { streams[stream]?.tunnel.acceptsSplice ?? false }

    public func session(_ session: Session, headers: HeaderList, stream: StreamID, endStream: Bool) {
        onHeaders?(headers, stream, endStream)
    }

    public func session(_ session: Session, data: UnsafeRawBufferPointer, stream: StreamID) {
        if let carrier = streams[stream] {
            carrier.received(data)
        } else {
            onOtherData?(stream, data)
            session.consume(stream, data.count)
        }
    }

    public func session(_ session: Session, endOfStream stream: StreamID) {
        streams[stream]?.tunnel.peerEnded()
    }

    public func session(_ session: Session, closed stream: StreamID, errorCode: UInt32) {
        if let carrier = streams[stream] {
            carrier.tunnel.streamClosed(errorCode: errorCode)
        } else {
            onOtherClosed?(stream, errorCode)
        }
    }
}
