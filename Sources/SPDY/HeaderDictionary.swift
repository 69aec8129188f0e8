/// The SPDY/3 header-compression dictionary: a constant of the SPDY/3 specification
/// (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1 "Compression"; the Chromium "SPDY Protocol -
/// Draft 3" text is the same). Both ends prime their zlib streams with it, so it must be byte-exact
/// or the peer cannot inflate our first header block: 1423 bytes, Adler-32 0xE3C6A7C2 (what a zlib
/// stream names as its dictionary id; `SPDYTests` checks both).
///
/// The specification prints it as hex; it is built here from the same bytes in their own structure,
/// so it can be read: 65 names and values, each after its 32-bit big-endian length, then text.
public enum HeaderDictionary {
    public static let adler32: UInt32 = 0xE3C6_A7C2

    public static let bytes: [UInt8] = {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(1423)
        for word in prefixedWords {
            let count = UInt32(word.utf8.count)
            bytes += [UInt8(count >> 24), UInt8(count >> 16 & 0xff), UInt8(count >> 8 & 0xff), UInt8(count & 0xff)]
            bytes += Array(word.utf8)
        }
        bytes += Array(tail.utf8)
        return bytes
    }()

    private static let prefixedWords = [
        "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
        "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
        "cache-control", "connection", "content-base", "content-encoding", "content-language",
        "content-length", "content-location", "content-md5", "content-range", "content-type", "date",
        "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since", "if-none-match",
        "if-range", "if-unmodified-since", "last-modified", "location", "max-forwards", "pragma",
        "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after", "server", "te",
        "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
        "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url", "public",
        "set-cookie", "keep-alive", "origin",
    ]

    private static let tail =
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
        + "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
        + "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
        + "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
        + "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
        + "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
        + "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
}
