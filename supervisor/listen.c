/* Opening --listen's socket (listen.h). */
#include "listen.h"
#include "../engine/common.h"

#include <errno.h>
#include <grp.h>
#include <stdlib.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* The gid of group (a name, or a number). */
static int group_id(const char *group, gid_t *gid)
{
	struct group *g = getgrnam(group);
	if (g) {
		*gid = g->gr_gid;
		return 0;
	}
	char *end;
	long v = strtol(group, &end, 10);
	if (end == group || *end || v < 0 || v > 0x7fffffffL)
		return -1;
	*gid = (gid_t)v;
	return 0;
}

static int listen_unix(const char *path, int mode, const char *group, char *err)
{
	gid_t gid = 0;
	if (group && group_id(group, &gid) < 0)
		return ember_err(err, -EINVAL, "--listen-group %s: no such group", group);
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof un.sun_path)
		return ember_err(err, -ENAMETOOLONG, "--listen %s: the path is too long (at most %zu "
						     "bytes)", path, sizeof un.sun_path - 1);
	strcpy(un.sun_path, path);
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return ember_err(err, -errno, "--listen %s: socket: %s", path, strerror(errno));
	const char *what = "bind";
	if (bind(fd, (struct sockaddr *)&un, sizeof un) < 0 ||
	    ((what = "chown"), group && chown(path, (uid_t)-1, gid) < 0) ||
	    ((what = "chmod"), chmod(path, (mode_t)mode) < 0)) {
		int rc = ember_err(err, -errno, "--listen %s: %s: %s", path, what, strerror(errno));
		close(fd);
		return rc;
	}
	return fd;
}

static int listen_tcp(const char *addr, char *err)
{
	char host[256];
	const char *colon = strrchr(addr, ':');
	if (!colon || !colon[1] || (size_t)(colon - addr) >= sizeof host)
		return ember_err(err, -EINVAL, "--listen %s: want a socket path or HOST:PORT", addr);
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = 0;
	char *h = host;
	size_t hl = strlen(h);
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') { /* [::1]:9000 */
		h[hl - 1] = 0;
		h++;
	}
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
	struct addrinfo *ai = NULL;
	int g = getaddrinfo(*h ? h : NULL, colon + 1, &hints, &ai);
	if (g != 0)
		return ember_err(err, -EINVAL, "--listen %s: %s", addr, gai_strerror(g));
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		int rc = ember_err(err, -errno, "--listen %s: socket: %s", addr, strerror(errno));
		freeaddrinfo(ai);
		return rc;
	}
	int one = 1;
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		int rc = ember_err(err, -errno, "--listen %s: bind: %s", addr, strerror(errno));
		freeaddrinfo(ai);
		close(fd);
		return rc;
	}
	freeaddrinfo(ai);
	return fd;
}

int listen_is_path(const char *addr)
{
	return addr[0] == '/' || addr[0] == '.';
}

int listen_open(const char *addr, int mode, const char *group, char *err)
{
	int fd = listen_is_path(addr) ? listen_unix(addr, mode, group, err) : listen_tcp(addr, err);
	if (fd >= 0 && listen(fd, SOMAXCONN) < 0) {
		int rc = ember_err(err, -errno, "--listen %s: listen: %s", addr, strerror(errno));
		close(fd);
		return rc;
	}
	return fd;
}
