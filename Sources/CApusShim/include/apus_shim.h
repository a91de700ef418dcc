/* Small C wrappers for what Swift cannot import directly: OpenSSL macros, epoll/eventfd/accept4,
 * and the Cyrus SASL process-global callbacks (which must be C function pointers whose data lives
 * for the whole process). */
#ifndef APUS_SHIM_H
#define APUS_SHIM_H
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <sasl/sasl.h>
#include <unbound.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

/* epoll / sockets */
int apus_epoll_create(void);
int apus_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
/* Waits; fills fds[i] and evs[i]; returns count or -1. */
int apus_epoll_wait(int epfd, uint64_t *datas, uint32_t *evs, int max, int timeout_ms);
int apus_eventfd(void);
int apus_accept4(int fd, struct sockaddr *addr, socklen_t *len);
uint32_t apus_epollin(void);
uint32_t apus_epollout(void);
uint32_t apus_epolloneshot(void);
uint32_t apus_epollerr(void);
uint32_t apus_epollhup(void);
uint32_t apus_epollrdhup(void);

/* OpenSSL macros */
int apus_ssl_ctx_set_min_proto(SSL_CTX *ctx, int version);
long apus_ssl_ctx_set_mode(SSL_CTX *ctx, long mode);
long apus_ssl_set_tlsext_host_name(SSL *ssl, const char *name);
long apus_ssl_ctx_set_session_cache_mode(SSL_CTX *ctx, long mode);
int apus_tls1_2_version(void);
long apus_ssl_mode_release_buffers(void);
long apus_ssl_mode_accept_moving_write_buffer(void);
long apus_ssl_mode_enable_partial_write(void);
long apus_ssl_sess_cache_server(void);
unsigned long apus_ssl_op_no_renegotiation(void);

/* Cyrus SASL: one process-wide configuration, answered by a SASL_CB_GETOPT callback.
 * Must be called once, before any session exists. Strings are copied and kept forever. */
int apus_sasl_server_init(const char *appname, const char *sasldb_path, const char *mech_list);
int apus_sasl_client_init(void);
/* Per-connection callbacks for the client side (smarthost AUTH): none yet beyond defaults. */

#endif
