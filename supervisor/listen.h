/* The listening socket of --listen, opened the same way by emberd and by
 * ember-worker serving alone. */
#ifndef EMBER_LISTEN_H
#define EMBER_LISTEN_H

/* Opens addr for listening: a unix socket path (starting with / or .; a
 * stale socket file there is replaced, and the socket gets permissions
 * mode and, when group is not NULL, that group: a name or a number) or
 * HOST:PORT (a name or address; [::1]:9000 for IPv6; an empty HOST is
 * every address). The fd is close-on-exec. Returns the fd, or a negative
 * errno with err saying what failed, naming addr. */
int listen_open(const char *addr, int mode, const char *group, char *err);

/* Whether addr names a unix socket (what listen_open makes a file of). */
int listen_is_path(const char *addr);

#endif
