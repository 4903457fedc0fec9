//! RTP and RTCP packets, sans-IO: RFC 6184 (H.264) and RFC 2435 (JPEG) packetizers, RTCP sender
//! reports. (Being written: issue 18.)
