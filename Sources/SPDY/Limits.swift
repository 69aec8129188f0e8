/// What one SPDY connection's peer can make this side hold. The defaults are what kubectl needs
/// many times over: its header blocks are a few hundred bytes.
public struct SPDYLimits: Sendable, Equatable {
    /// The longest control frame accepted (its payload: for SYN_STREAM, HEADERS and SYN_REPLY the
    /// compressed header block). A control frame is gathered whole before it is decoded, so this
    /// bounds that buffer. DATA frames are not bounded here: their payload is handed over as it
    /// arrives, never gathered, and SPDY's 24-bit length caps a frame at 16 MiB - 1 anyway.
    public var maxControlFrameLength: Int = defaultMaxControlFrameLength
    /// The largest header block after decompression, checked while inflating, so a small frame
    /// that inflates to gigabytes (a zlib bomb) stops at this many bytes.
    public var maxHeaderBlockSize: Int = defaultMaxHeaderBlockSize
    /// Streams open at once; a SYN_STREAM beyond it is refused (RST_STREAM REFUSED_STREAM).
    public var maxConcurrentStreams: Int = defaultMaxConcurrentStreams

    public static let defaultMaxControlFrameLength = 64 * 1024
    public static let defaultMaxHeaderBlockSize = 64 * 1024
    public static let defaultMaxConcurrentStreams = 16_384

    public init() {}
}
