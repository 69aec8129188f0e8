import HTTP2
import Reactor
import SPDY

/// A tunnel's transport over SPDY/3.1 (`portforward.k8s.io`): the data stream of an error/data
/// pair. It is the stream's `DataSource` for the connection's output queue (frames point into
/// the tunnel's buffers or pipes, as over HTTP/2).
///
/// SPDY has no flow control (kubectl's spdystream neither sends nor heeds WINDOW_UPDATE), so
/// `consume` opens no window: it counts what the pod socket took, and while a stream holds its
/// bound of received, unwritten bytes the connection stops reading (`SPDYConnection`).
final class SPDYStream: TunnelBody, StreamTransport {
    weak var owner: SPDYConnection?
    let pair: PortForwardPairs.Pair
    let held: HeldBytes
    /// Received for the pod and not yet written to it.
    var unwritten = 0
    /// In the owner's list of streams with bytes (or their end) to send.
    var listed = false
    /// This side sent FIN on the error stream, and on the data stream.
    var errorEnded = false
    var dataEnded = false
    var peerEnded = false
    /// The stream ended both ways (or was reset): the tunnel was told.
    var closed = false

    init(owner: SPDYConnection, pair: PortForwardPairs.Pair) {
        self.owner = owner
        self.pair = pair
        held = owner.held
        super.init()
    }

    var stream: UInt32 { pair.dataStream }

    func resume() { owner?.ready(self) }

    func consume(_ count: Int) { owner?.written(self, count) }

    func reset() { owner?.abandon(self) }
}
