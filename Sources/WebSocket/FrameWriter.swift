/// A server's outgoing frames (unmasked, section 5.1; `masked` makes one a client's). A data frame is written as its header
/// alone, so that the payload can follow from the caller's own buffer or pipe (writev, splice)
/// without being copied next to it; control frames are small and come whole.
public enum FrameWriter {
    /// The header's size for a payload of `payloadLength`: 2, 4 or 10 bytes.
    public static func headerLength(payloadLength: Int) -> Int {
        FrameHeader(opcode: .binary, payloadLength: payloadLength).encodedLength
    }

    /// Writes the header of a frame with `payloadLength` bytes to come to the front of `out`
    /// (which holds at least `headerLength(payloadLength:)` bytes) and returns its size.
    /// For a message in several frames: the first has the message's opcode, the rest
    /// `.continuation`, and only the last has `fin`.
    @discardableResult
    public static func header(_ opcode: Opcode, fin: Bool = true, payloadLength: Int,
                              into out: UnsafeMutableRawBufferPointer) -> Int {
        FrameHeader(fin: fin, opcode: opcode, payloadLength: payloadLength).encode(into: out)
    }

    public static func header(_ opcode: Opcode, fin: Bool = true, payloadLength: Int) -> [UInt8] {
        FrameHeader(fin: fin, opcode: opcode, payloadLength: payloadLength).encoded()
    }

    /// A whole frame, header and a copy of the payload: for small frames.
    public static func frame(_ opcode: Opcode, fin: Bool = true, payload: some Collection<UInt8>) -> [UInt8] {
        header(opcode, fin: fin, payloadLength: payload.count) + payload
    }

    public static func ping(_ payload: [UInt8] = []) -> [UInt8] {
        precondition(payload.count <= FrameHeader.maxControlPayload)
        return frame(.ping, payload: payload)
    }

    public static func pong(_ payload: [UInt8]) -> [UInt8] {
        precondition(payload.count <= FrameHeader.maxControlPayload)
        return frame(.pong, payload: payload)
    }

    /// A close frame; with no code its payload is empty (section 5.5.1). The reason is cut to fit
    /// the 125 bytes of a control frame, at a character boundary.
    public static func close(code: UInt16?, reason: String = "") -> [UInt8] {
        guard let code else { return frame(.close, payload: []) }
        var payload = [UInt8(code >> 8), UInt8(code & 0xFF)]
        for character in reason {
            let bytes = Array(String(character).utf8)
            if payload.count + bytes.count > FrameHeader.maxControlPayload { break }
            payload += bytes
        }
        return frame(.close, payload: payload)
    }

    /// `frame` (whole, as written above) as a client sends it: masked with `key` (section 5.3).
    public static func masked(_ frame: [UInt8], key: UInt32) -> [UInt8] {
        guard case .header(var header, let length) = frame.withUnsafeBytes({ FrameHeader.decode($0) }) else { return frame }
        header.mask = key
        var payload = Array(frame[length...])
        var mask = Mask(key: key)
        payload.withUnsafeMutableBytes { mask.apply($0) }
        return header.encoded() + payload
    }
}
