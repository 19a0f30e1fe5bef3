// Errors thrown by the comm layer. Each names the operation, its sequence
// number on the communicator, the rank that throws, and the ranks at fault, so
// a user reading one rank's log knows what to fix (or which node to look at).
#pragma once

#include "../core/error.hpp"

namespace weft::comm {

// Base of every communication error.
struct CommError : Error {
  using Error::Error;
};

// A deadline expired: names the op, sequence number and the ranks that did not arrive.
struct TimeoutError : CommError {
  using CommError::CommError;
};

// Ranks called different collectives (op, dtype, count, root or sequence differ).
struct MismatchError : CommError {
  using CommError::CommError;
};

// Another rank failed (threw, or returned without taking part); names the origin.
struct PeerFailedError : CommError {
  using CommError::CommError;
};

// The transport itself refused a move: an MPI error code (MPI_ERR_TRUNCATE,
// ...; weft sets MPI_ERRORS_RETURN on its communicator so these are not
// fatal), or on thread ranks a message larger than the buffer posted for it.
// Transports throw it with their own words; the communicator rethrows it with
// the call (op, sequence number, rank) it interrupted in front.
struct TransportError : CommError {
  using CommError::CommError;
};

// The communicator failed earlier (timeout, mismatch, peer failure): every later
// call fails at once with the original reason, since ranks are out of step.
struct BrokenError : CommError {
  using CommError::CommError;
};

}  // namespace weft::comm
