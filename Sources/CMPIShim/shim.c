#include "CMPIShim.h"

MPI_Comm sura_mpi_comm_world(void) { return MPI_COMM_WORLD; }
MPI_Comm sura_mpi_comm_null(void) { return MPI_COMM_NULL; }
MPI_Datatype sura_mpi_float(void) { return MPI_FLOAT; }
MPI_Datatype sura_mpi_double(void) { return MPI_DOUBLE; }
MPI_Datatype sura_mpi_byte(void) { return MPI_BYTE; }
MPI_Datatype sura_mpi_int(void) { return MPI_INT; }
MPI_Op sura_mpi_sum(void) { return MPI_SUM; }
MPI_Op sura_mpi_max(void) { return MPI_MAX; }
MPI_Op sura_mpi_min(void) { return MPI_MIN; }
MPI_Request sura_mpi_request_null(void) { return MPI_REQUEST_NULL; }
MPI_Message sura_mpi_message_null(void) { return MPI_MESSAGE_NULL; }
MPI_Status *sura_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
MPI_Errhandler sura_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
void *sura_mpi_in_place(void) { return MPI_IN_PLACE; }
int sura_mpi_any_source(void) { return MPI_ANY_SOURCE; }
int sura_mpi_undefined(void) { return MPI_UNDEFINED; }
int sura_mpi_success(void) { return MPI_SUCCESS; }
int sura_mpi_err_truncate(void) { return MPI_ERR_TRUNCATE; }
int sura_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
int sura_mpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
int sura_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
int sura_mpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
int sura_mpi_comm_type_shared(void) { return MPI_COMM_TYPE_SHARED; }
