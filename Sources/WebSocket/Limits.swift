/// The bound a WebSocket endpoint puts on what its peer sends.
public struct WebSocketLimits: Sendable, Equatable {
    /// The largest data message (the sum of its frames' payloads), checked at each frame's header,
    /// before any of its payload is read: past it the reader fails with close code 1009.
    /// Payloads are handed on as they arrive, never gathered, so this is a sanity bound on the
    /// peer rather than a memory bound (a reader holds at most a 14-byte header and a 125-byte
    /// control payload). Default: 32 MiB, the payload limit of golang.org/x/net/websocket, which
    /// kubelet's channel protocol uses; kubectl sends one SPDY write (at most a 16 MiB frame) per message.
    public var maxMessageBytes: Int

    public static let defaultMaxMessageBytes = 32 << 20

    public init(maxMessageBytes: Int = defaultMaxMessageBytes) {
        precondition(maxMessageBytes >= 0)
        self.maxMessageBytes = maxMessageBytes
    }
}
