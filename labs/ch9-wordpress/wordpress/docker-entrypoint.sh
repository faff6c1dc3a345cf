#!/bin/bash
# Entrypoint of the WordPress image: write Debian's WordPress configuration
# (/etc/wordpress/config-default.php, read by /usr/share/wordpress/wp-config.php
# for every host name) from the environment, then run the command.
#
# Environment (docker run -e), named as in the official wordpress image:
#   WORDPRESS_DB_HOST      database host[:port] (default: mysql)
#   WORDPRESS_DB_NAME      database (default: wordpress)
#   WORDPRESS_DB_USER      user (default: wordpress)
#   WORDPRESS_DB_PASSWORD  password (required)
#   WORDPRESS_TABLE_PREFIX (default: wp_)
# The authentication keys and salts are random, made on the container's first start.
set -euo pipefail

CONF=/etc/wordpress/config-default.php
SALTS=/etc/wordpress/salts.php

: "${WORDPRESS_DB_PASSWORD:?entrypoint: set WORDPRESS_DB_PASSWORD}"
WORDPRESS_DB_HOST=${WORDPRESS_DB_HOST:-mysql}
WORDPRESS_DB_NAME=${WORDPRESS_DB_NAME:-wordpress}
WORDPRESS_DB_USER=${WORDPRESS_DB_USER:-wordpress}
WORDPRESS_TABLE_PREFIX=${WORDPRESS_TABLE_PREFIX:-wp_}

# a PHP single-quoted string literal
php_str() { local s=${1//\\/\\\\}; printf "'%s'" "${s//\'/\\\'}"; }

umask 027
if [ ! -s "$SALTS" ]; then
    {
        echo '<?php'
        echo '// Authentication unique keys and salts: random, made by docker-entrypoint.sh.'
        for k in AUTH_KEY SECURE_AUTH_KEY LOGGED_IN_KEY NONCE_KEY AUTH_SALT SECURE_AUTH_SALT LOGGED_IN_SALT NONCE_SALT; do
            printf "define( '%s', '%s' );\n" "$k" "$(head -c 48 /dev/urandom | base64 -w0)"
        done
    } > "$SALTS"
fi
cat > "$CONF" <<PHP
<?php
// Written by docker-entrypoint.sh from the container's environment; see
// /usr/share/doc/wordpress/README.Debian.
define( 'DB_NAME', $(php_str "$WORDPRESS_DB_NAME") );
define( 'DB_USER', $(php_str "$WORDPRESS_DB_USER") );
define( 'DB_PASSWORD', $(php_str "$WORDPRESS_DB_PASSWORD") );
define( 'DB_HOST', $(php_str "$WORDPRESS_DB_HOST") );
define( 'DB_CHARSET', 'utf8mb4' );
define( 'DB_COLLATE', '' );
\$table_prefix = $(php_str "$WORDPRESS_TABLE_PREFIX");
require_once '$SALTS';
define( 'WP_CONTENT_DIR', '/var/lib/wordpress/wp-content' );
PHP
chgrp www-data "$CONF" "$SALTS"
chmod 0640 "$CONF" "$SALTS"
echo "entrypoint: wrote $CONF (database $WORDPRESS_DB_NAME on $WORDPRESS_DB_HOST as $WORDPRESS_DB_USER)"

exec "$@"
