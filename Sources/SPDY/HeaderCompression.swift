import CZlib

// SPDY/3 compresses every header block of a direction with ONE zlib stream for the whole
// connection, primed with `HeaderDictionary`, each block ending in a sync flush (section 2.6.10.1).
// So a block cannot be skipped or decoded out of order: each side keeps one compressor and one
// decompressor for as long as the connection lives, and a block that fails ends the connection.

/// The sending direction's zlib stream.
public final class HeaderCompressor {
    private let stream = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)

    public init() throws {
        stream.initialize(to: z_stream())
        var result = pf_deflate_init(stream, Z_DEFAULT_COMPRESSION)
        if result == Z_OK {
            result = HeaderDictionary.bytes.withUnsafeBufferPointer {
                deflateSetDictionary(stream, $0.baseAddress, uInt($0.count))
            }
            if result != Z_OK { deflateEnd(stream) }
        }
        guard result == Z_OK else {
            stream.deallocate()
            throw SPDYError.compression(result)
        }
    }

    deinit {
        deflateEnd(stream)
        stream.deallocate()
    }

    /// Compresses `block`'s wire form onto the end of `output`, ending in a sync flush.
    public func compress(_ block: HeaderBlock, appendingTo output: inout [UInt8]) throws {
        let plain = block.encoded()
        try plain.withUnsafeBytes { try compress($0, appendingTo: &output) }
    }

    public func compress(_ plain: UnsafeRawBufferPointer, appendingTo output: inout [UInt8]) throws {
        stream.pointee.next_in = UnsafeMutablePointer(mutating: plain.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.pointee.avail_in = uInt(plain.count)
        defer {
            stream.pointee.next_in = nil
            stream.pointee.next_out = nil
        }
        // A sync flush adds a few bytes and the dictionary makes blocks small: one step is the rule.
        var room = plain.count / 2 + 64
        while true {
            let start = output.count
            output += repeatElement(0, count: room)
            let result = output.withUnsafeMutableBytes { buffer in
                stream.pointee.next_out = (buffer.baseAddress! + start).assumingMemoryBound(to: Bytef.self)
                stream.pointee.avail_out = uInt(room)
                return deflate(stream, Z_SYNC_FLUSH)
            }
            let unused = Int(stream.pointee.avail_out)
            output.removeLast(unused)
            // Z_BUF_ERROR: nothing left to do (the last step filled its room exactly).
            guard result == Z_OK || result == Z_BUF_ERROR else { throw SPDYError.compression(result) }
            if unused > 0 || result == Z_BUF_ERROR { return }
            room = 256
        }
    }
}

/// The receiving direction's zlib stream, bounded: it never produces more than `limit` bytes for
/// one block, so a small frame that would inflate to gigabytes costs at most `limit` + 1 bytes.
public final class HeaderDecompressor {
    public let limit: Int
    private let stream = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
    /// Inflating goes this far at a time, so a small block gets a small buffer.
    private static let step = 4096

    public init(limit: Int = SPDYLimits.defaultMaxHeaderBlockSize) throws {
        self.limit = limit
        stream.initialize(to: z_stream())
        let result = pf_inflate_init(stream)
        guard result == Z_OK else {
            stream.deallocate()
            throw SPDYError.compression(result)
        }
    }

    deinit {
        inflateEnd(stream)
        stream.deallocate()
        scratch?.deallocate()
    }

    /// Where a block is inflated: grown a step at a time up to `limit` + 1, given back after a
    /// block that needed more than `keptScratch`. Filling a Swift array a step at a time instead
    /// cost about 1 ms per header block in a debug build (a SYN_STREAM flood then held the
    /// reactor thread for seconds).
    private var scratch: UnsafeMutableRawPointer?
    private var scratchCapacity = 0
    private static let keptScratch = 16 * 1024

    private func reserveScratch(_ count: Int) {
        guard scratchCapacity < count else { return }
        let capacity = min(max(count, scratchCapacity * 2), limit + 1)
        let grown = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
        if let scratch {
            grown.copyMemory(from: scratch, byteCount: scratchCapacity)
            scratch.deallocate()
        }
        scratch = grown
        scratchCapacity = capacity
    }

    /// Inflates one block (all of `compressed`, which ends in the sender's sync flush).
    public func inflate(_ compressed: UnsafeRawBufferPointer) throws -> [UInt8] {
        stream.pointee.next_in = UnsafeMutablePointer(mutating: compressed.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.pointee.avail_in = uInt(compressed.count)
        defer {
            stream.pointee.next_in = nil
            stream.pointee.next_out = nil
            if scratchCapacity > Self.keptScratch {
                scratch?.deallocate()
                scratch = nil
                scratchCapacity = 0
            }
        }
        var count = 0
        while true {
            // One byte past the limit is room enough to see that a block is over it.
            let room = min(Self.step, limit + 1 - count)
            reserveScratch(count + room)
            stream.pointee.next_out = (scratch! + count).assumingMemoryBound(to: Bytef.self)
            stream.pointee.avail_out = uInt(room)
            var result = CZlib.inflate(stream, Z_SYNC_FLUSH)
            let unused = Int(stream.pointee.avail_out)
            count += room - unused
            if result == Z_NEED_DICT {
                // The first block names the dictionary by its Adler-32; only SPDY/3's is known.
                guard stream.pointee.adler == uLong(HeaderDictionary.adler32) else {
                    throw SPDYError.invalidHeaderBlock("zlib asks for an unknown dictionary")
                }
                result = HeaderDictionary.bytes.withUnsafeBufferPointer {
                    inflateSetDictionary(stream, $0.baseAddress, uInt($0.count))
                }
                guard result == Z_OK else { throw SPDYError.compression(result) }
                continue
            }
            guard count <= limit else { throw SPDYError.headerBlockTooLarge(limit: limit) }
            let done = { Array(UnsafeRawBufferPointer(start: self.scratch, count: count)) }
            switch result {
            case Z_OK, Z_BUF_ERROR:
                // Done when zlib had room left over and nothing more to read.
                if stream.pointee.avail_in == 0, unused > 0 { return done() }
                if result == Z_BUF_ERROR, stream.pointee.avail_in == 0 { return done() }
            case Z_STREAM_END:
                throw SPDYError.invalidHeaderBlock("the peer ended its zlib stream")
            default:
                throw SPDYError.compression(result)
            }
        }
    }

    public func decompress(_ compressed: UnsafeRawBufferPointer) throws -> HeaderBlock {
        let plain = try inflate(compressed)
        return try plain.withUnsafeBytes { try HeaderBlock(decoding: $0) }
    }
}
