//! net: below the front ends, the serving port itself: [`listen`] (connections, their
//! deadlines and caps, HTTP/1.1 and HTTP/2, the drain), [`tls`] (its rustls
//! configuration), [`budget`] (the memory the request bodies in flight may hold).

pub mod budget;
pub mod listen;
pub mod tls;
