<?php
// Read by Debian's /usr/share/wordpress/wp-config.php for any host name.
// The database settings come from the container's environment (docker-compose.yml);
// the password is a secret generated per lab instance, never written into the image.
define('DB_NAME', getenv('WORDPRESS_DB_NAME') ?: 'wordpress');
define('DB_USER', getenv('WORDPRESS_DB_USER') ?: 'wordpress');
define('DB_PASSWORD', getenv('WORDPRESS_DB_PASSWORD') ?: '');
define('DB_HOST', getenv('WORDPRESS_DB_HOST') ?: 'db');
define('DB_CHARSET', 'utf8mb4');
define('WP_CONTENT_DIR', '/var/lib/wordpress/wp-content');
// The authentication keys and salts are not defined here: WordPress then generates
// random ones at installation and keeps them in its database.
