/* The installed C API from C: version, and a failed load reported as a status and a message. */
#include <stdio.h>
#include <string.h>

#include "instantid/instantid.h"

int main(void) {
  instantid_model* model = NULL;
  const instantid_status status = instantid_model_load("/nonexistent/ip-adapter.bin", NULL, &model);
  const int ok = status == INSTANTID_ERROR && model == NULL &&
                 strstr(instantid_last_error(), "/nonexistent/ip-adapter.bin") != NULL;
  printf("instantid C consumer: version %s, missing checkpoint -> %s (%s)\n", instantid_version(),
         instantid_status_string(status), ok ? "as expected" : "UNEXPECTED");
  return ok ? 0 : 1;
}
